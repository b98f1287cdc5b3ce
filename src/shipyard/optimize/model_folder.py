"""A model folder made from another (unpacked, exported): built in a `.partial` folder beside
where it goes, then put in place in one rename, so a crash never leaves half a model that a
cache lookup would take for a whole one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def staging(out_dir: Path) -> Path:
    """An empty folder to build `out_dir` in."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def complete(partial: Path, source: Path, out_dir: Path, config: dict, note: tuple[str, dict],
             tensors: dict | None = None) -> Path:
    """Write `tensors` (unless already there), `config`, the source's other files (tokenizer,
    chat template...) and a note saying where it came from; then put the folder in place."""
    if tensors is not None:
        from safetensors.torch import save_file

        save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    for extra in source.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name != "config.json" \
                and not extra.name.endswith(".index.json") and not (partial / extra.name).exists():
            shutil.copy(extra, partial / extra.name)
    name, content = note
    (partial / name).write_text(json.dumps(content, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    return out_dir
