"""Token ids → text, one token at a time; each token's own text and bytes for logprobs.

Decoding a growing list of ids one id at a time is wrong for byte-level BPE (one character can
span several tokens) and for SentencePiece (a token's leading space depends on what precedes
it). The offsets technique used by TGI and vLLM decodes a short window twice and emits only the
stable difference; an incomplete UTF-8 sequence ("\ufffd" at the end) is held until complete.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Prompt tokens decoded as context for the first generated token (SentencePiece spacing).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Append one id; return the text that became stable because of it (may be "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """At the end of generation: whatever is still held (e.g. a dangling partial character)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class TokenTextCache:
    """Per-token text and bytes for logprobs, decoded once per vocabulary entry.

    A token that holds part of a UTF-8 character decodes to "\ufffd" on its own; its `bytes`
    are then the token's real bytes (as OpenAI reports them), read from the vocabulary: GPT-2
    style byte-level pieces map back through the byte alphabet, SentencePiece byte-fallback
    pieces (`<0xE2>`) name their byte.
    """

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._byte_level = _uses_byte_level(tokenizer)

    def get(self, token_id: int) -> tuple[str, list[int]]:
        entry = self._cache.get(token_id)
        if entry is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            raw = text.encode("utf-8")
            if "\ufffd" in text:
                raw = self._piece_bytes(token_id) or raw
            entry = (text, list(raw))
            self._cache[token_id] = entry
        return entry

    def _piece_bytes(self, token_id: int) -> bytes | None:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return None
        match = _BYTE_FALLBACK.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        if self._byte_level and all(c in _BYTE_DECODER for c in piece):
            return bytes(_BYTE_DECODER[c] for c in piece)
        return None


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode(): printable stand-in character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_DECODER = _byte_alphabet()


def _uses_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder")
    except Exception:
        return False
    return "ByteLevel" in json.dumps(decoder)
