"""Engine chunks → OpenAI objects (chat and legacy completions, whole or streamed)."""

from __future__ import annotations

import codecs

from shipyard import __version__
from shipyard.engines.base import TokenLogprob, Usage
from shipyard.engines.structured import ToolCall

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


class TextOffsets:
    """Where each token starts in the text, counted from the tokens' own bytes: a character split
    over several tokens is counted once, so offsets never drift."""

    def __init__(self, start: int = 0):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.offset = start

    def take(self, raw: list[int]) -> int:
        at = self.offset
        self.offset += len(self._decoder.decode(bytes(raw)))
        return at


def completion_logprobs(entries: list[TokenLogprob], offsets: TextOffsets) -> dict:
    """Legacy completions logprobs. `top_logprobs` always holds the chosen token too, so it may
    have `logprobs + 1` entries, as OpenAI's does; a prompt's first token has null entries."""
    tops = []
    for e in entries:
        if e.logprob is None:
            tops.append(None)
            continue
        top = {t.token: t.logprob for t in e.top}
        top.setdefault(e.token, e.logprob)
        tops.append(top)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
        "text_offset": [offsets.take(e.bytes) for e in entries],
    }


def vllm_prompt_logprobs(entries: list[TokenLogprob]) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt token, {token id: {logprob, rank, decoded_token}}
    for the token itself and the top ones; None for the first token."""
    out: list[dict | None] = []
    for e in entries:
        if e.logprob is None:
            out.append(None)
            continue
        position = {str(t.token_id): {"logprob": t.logprob, "rank": rank, "decoded_token": t.token}
                    for rank, t in enumerate(e.top, start=1)}
        position.setdefault(str(e.token_id), {"logprob": e.logprob, "rank": e.rank, "decoded_token": e.token})
        out.append(position)
    return out


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
    def choice(index: int, text: str, finish_reason: str, logprobs: list[TokenLogprob] | None,
               tool_calls: list[ToolCall] | None = None) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        if tool_calls:  # OpenAI's shape: the calls, and no content unless the model wrote some
            message["tool_calls"] = [call.openai() for call in tool_calls]
            message["content"] = text if text.strip() else None
        return {
            "index": index,
            "message": message,
            "logprobs": chat_logprobs(logprobs) if logprobs is not None else None,
            "finish_reason": finish_reason,
        }


class CompletionFormatter(_Formatter):
    object_name = "text_completion"

    def chunk(self, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        return self._chunk({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason})

    def response(self, choices: list[dict], usage: Usage | None) -> dict:
        return {**self.base, "choices": choices, "usage": usage_dict(usage)}
