"""The docs' curl examples work as written: every one that sends a body says it is JSON (the
server answers 415 otherwise)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _curl_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines, joined
    return [line.strip() for line in joined.splitlines() if re.match(r"\s*curl\b", line)]


def test_every_curl_example_with_a_body_sends_it_as_json():
    checked = 0
    for doc in DOCS:
        for command in _curl_commands(doc.read_text()):
            if re.search(r"\s(-d|--data|--data-raw)\s", command):
                checked += 1
                assert re.search(r"content-type:\s*application/json", command, re.I), f"{doc.name}: {command}"
    assert checked >= 4


def test_the_architecture_map_names_every_module():
    """docs/ARCHITECTURE.md's package map, file for file."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "src" / "shipyard").rglob("*.py"))
               if "migrations" not in path.parts and path.name != "__init__.py" and path.name not in doc]
    assert missing == []
