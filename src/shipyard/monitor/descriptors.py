"""Per-request descriptors for drift: numbers and categories that describe a request and its answer
without keeping its text. Computed off the request path (monitor/drift.py's worker thread)."""

from __future__ import annotations

import re
import unicodedata

NUMERIC = ("prompt_tokens", "output_tokens", "mean_logprob", "prompt_non_ascii_share", "prompt_symbol_share",
           "output_symbol_share")
CATEGORICAL = ("finish_reason", "prompt_script", "refusal", "prompt_pii", "output_pii")

_SCAN = 4000  # characters looked at per text: enough to describe it, bounded cost
_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "THAI", "HANGUL", "HIRAGANA",
            "KATAKANA", "CJK")
_SYMBOLS = set("{}()[];=<>+-*/%&|^!~#$@\\:_\"'`")
_REFUSAL = re.compile(r"\b(I can(?:no|')t|I am (?:sorry|unable)|I'm (?:sorry|unable)|I (?:won't|will not) "
                      r"(?:help|assist)|as an AI\b)", re.IGNORECASE)
_PII = {
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    "card": re.compile(r"\b(?:\d[ -]?){13,16}\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "phone": re.compile(r"(?<!\w)\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?!\w)"),
    "ipv4": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}


def script_of(text: str) -> str:
    """The script most of the letters are written in (`none` without letters)."""
    counts: dict[str, int] = {}
    for char in text[:_SCAN]:
        if not char.isalpha():
            continue
        if char.isascii():
            counts["LATIN"] = counts.get("LATIN", 0) + 1
            continue
        name = unicodedata.name(char, "")
        script = next((s for s in _SCRIPTS if name.startswith(s)), "OTHER")
        counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.get).lower() if counts else "none"


def _share(text: str, test) -> float:
    sample = text[:_SCAN]
    return sum(1 for c in sample if test(c)) / len(sample) if sample else 0.0


def pii_kind(text: str) -> str:
    sample = text[:_SCAN]
    return next((kind for kind, pattern in _PII.items() if pattern.search(sample)), "none")


def describe(prompt: str, output: str, prompt_tokens: int, output_tokens: int, finish_reason: str | None,
             mean_logprob: float | None) -> dict:
    return {
        "prompt_tokens": float(prompt_tokens),
        "output_tokens": float(output_tokens),
        "mean_logprob": float("nan") if mean_logprob is None else float(mean_logprob),
        "prompt_non_ascii_share": _share(prompt, lambda c: not c.isascii()),
        "prompt_symbol_share": _share(prompt, _SYMBOLS.__contains__),
        "output_symbol_share": _share(output, _SYMBOLS.__contains__),
        "finish_reason": finish_reason or "unknown",
        "prompt_script": script_of(prompt),
        "refusal": "yes" if _REFUSAL.search(output[:_SCAN]) else "no",
        "prompt_pii": pii_kind(prompt),
        "output_pii": pii_kind(output),
    }
