"""Engine chunks → OpenAI objects (chat and legacy completions, whole or streamed)."""

from __future__ import annotations

from shipyard import __version__
from shipyard.engines.base import TokenLogprob, Usage

SYSTEM_FINGERPRINT = f"shipyard-{__version__}"


def usage_dict(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], text_offset_start: int) -> dict:
    offsets, offset = [], text_offset_start
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


class _Formatter:
    object_name = ""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool):
        self.base = {"id": completion_id, "object": self.object_name, "created": created, "model": model,
                     "system_fingerprint": SYSTEM_FINGERPRINT}
        self.include_usage = include_usage

    def _chunk(self, choice: dict) -> dict:
        body = {**self.base, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: Usage) -> dict:
        return {**self.base, "choices": [], "usage": usage_dict(usage)}


class ChatFormatter(_Formatter):
    object_name = "chat.completion.chunk"

    def chunk(self, index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
        return self._chunk({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason})

    def response(self, choices: list[dict], usage: Usage | None) -> dict:
        return {**self.base, "object": "chat.completion", "choices": choices, "usage": usage_dict(usage)}

    @staticmethod
    def choice(index: int, text: str, finish_reason: str, logprobs: list[TokenLogprob] | None) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
            "finish_reason": finish_reason,
        }


class CompletionFormatter(_Formatter):
    object_name = "text_completion"

    def chunk(self, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        return self._chunk({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason})

    def response(self, choices: list[dict], usage: Usage | None) -> dict:
        return {**self.base, "choices": choices, "usage": usage_dict(usage)}
