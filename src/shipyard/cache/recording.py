"""A finished answer as stored: its chunks, in order, as JSON (the same for memory and Redis),
compressed (chunks repeat their field names: a tenth of the size). Replayed, they are the chunks
the engine sent, so a cached stream has the same chunk shapes."""

from __future__ import annotations

import dataclasses
import json
import zlib

from shipyard.engines.base import GenerationChunk, TokenLogprob, TopLogprob, Usage
from shipyard.engines.structured import ToolCallDelta, new_call_id

_COMPRESSED = b"z"  # what plain JSON (older entries) never starts with
_DROPPED = ("timings", "served_by", "request_id", "cache", "cache_similarity", "confidence")  # of that run only


def _logprob(raw: dict) -> TokenLogprob:
    return TokenLogprob(**{**raw, "top": [TopLogprob(**t) for t in raw["top"]]})


def encode(chunks: list[GenerationChunk]) -> bytes:
    rows = []
    for chunk in chunks:
        row = {f.name: getattr(chunk, f.name) for f in dataclasses.fields(chunk) if f.name not in _DROPPED}
        for name in ("logprobs", "prompt_logprobs"):
            if row[name] is not None:
                row[name] = [dataclasses.asdict(entry) for entry in row[name]]
        if row["usage"] is not None:
            row["usage"] = dataclasses.asdict(row["usage"])
        if row["tool_calls"] is not None:
            row["tool_calls"] = [dataclasses.asdict(delta) for delta in row["tool_calls"]]
        rows.append(row)
    return _COMPRESSED + zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 1)


def decode(data: bytes, request_id: str) -> list[GenerationChunk]:
    """The stored chunks, for `request_id`; tool calls get ids of their own (an id names one call)."""
    chunks = []
    call_ids: dict[str, str] = {}
    if data[:1] == _COMPRESSED:
        data = zlib.decompress(data[1:])
    for row in json.loads(data):
        for name in ("logprobs", "prompt_logprobs"):
            if row[name] is not None:
                row[name] = [_logprob(entry) for entry in row[name]]
        if row["usage"] is not None:
            usage = Usage(**row["usage"])
            row["usage"] = Usage(usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.prompt_tokens)
        if row.get("tool_calls") is not None:
            row["tool_calls"] = [ToolCallDelta(**{**d, "id": call_ids.setdefault(d["id"], new_call_id())
                                                   if d["id"] else None}) for d in row["tool_calls"]]
        chunks.append(GenerationChunk(request_id=request_id, **row))
    return chunks


def complete(chunks: list[GenerationChunk]) -> bool:
    """Worth keeping: it ended (usage came) and no choice was cut off by an error or an abort."""
    return bool(chunks) and chunks[-1].usage is not None and all(
        c.finish_reason in (None, "stop", "length", "tool_calls") for c in chunks)
