"""One upstream call as engine chunks: OpenAI's SSE stream read, translated and timed.

Errors before the first chunk are raised from the first `__anext__` (the router may try another
replica); after it, the stream ends with an "error" chunk, since tokens have gone to the client.
Each server's error body is read the way it writes it (vLLM's `{"error": {...}}` or
`{"object": "error", ...}`, TGI's `{"error": "...", "error_type": ...}`, llama.cpp's).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
import aiohttp

from shipyard.engines.base import (
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
    estimate_prompt_tokens,
)
from shipyard.engines.errors import (
    EngineOverloadedError,
    EngineTimeoutError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamError,
)
from shipyard.engines.structured import ToolCallDelta
from shipyard.engines.watchdog import Watchdog

log = logging.getLogger("shipyard.upstream")

_FINISH = {"stop": "stop", "length": "length", "eos_token": "stop", "stop_sequence": "stop", "abort": "abort",
           "content_filter": "stop", "tool_calls": "tool_calls", "function_call": "tool_calls"}
_MAX_ERROR_BODY = 64 * 1024


class UpstreamStream:
    def __init__(self, engine, request: GenerationRequest, path: str, body: dict):  # its OpenAIHTTPEngine
        self._engine = engine
        self._request = request
        self._path, self._body = path, body
        self._response: aiohttp.ClientResponse | None = None
        self._lines = None
        self._ready: deque[GenerationChunk] = deque()
        self._done = False
        self._sent_tokens = 0
        self._usage: Usage | None = None
        self._last_index = 0
        self._opened = False
        self._watchdog = Watchdog(engine.config.first_token_timeout_s)  # one timer for every read

    def __aiter__(self):
        return self

    async def __anext__(self) -> GenerationChunk:
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            if self._response is None:
                await self._open()
            await self._read_event()
        return self._ready.popleft()

    async def _open(self) -> None:
        engine = self._engine
        engine.inflight += 1
        self._opened = True
        try:
            response = await self._watchdog.guard(engine.client.open_stream(self._path, self._body))
        except asyncio.TimeoutError:
            await self.aclose()
            raise EngineTimeoutError(f"The upstream engine did not answer within "
                                     f"{engine.config.first_token_timeout_s:g} s.") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:
            await self.aclose()
            raise EngineUnavailableError(f"The upstream engine at {engine.config.url} refused the connection.") from exc
        except aiohttp.ClientError as exc:
            await self.aclose()
            raise UpstreamError(f"The upstream engine failed: {type(exc).__name__}.") from exc
        self._response = response
        if response.status != 200:
            error = await _error_from(response, engine.flavor.name)
            await self.aclose()
            raise error
        self._lines = response.content

    async def _read_event(self) -> None:
        engine = self._engine
        timeout = engine.config.idle_timeout_s if self._sent_tokens else engine.config.first_token_timeout_s
        self._watchdog.limit_s = timeout
        try:
            raw = await self._watchdog.guard(self._lines.readline())
        except asyncio.TimeoutError:
            self._fail(EngineTimeoutError(f"The upstream engine went silent for {timeout:g} s."))
            return
        except (aiohttp.ClientError, ValueError) as exc:
            self._fail(UpstreamError(f"The upstream stream broke: {type(exc).__name__}."))
            return
        if not raw:  # the connection ended
            if self._response.content.is_eof() and self._clean_end():
                self._end()
            else:
                self._fail(UpstreamError("The upstream stream broke off."))
            return
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            return  # SSE comments, event names, keep-alives
        payload = line[5:].strip()
        if payload == "[DONE]":
            self._end()
            return
        try:
            event = json.loads(payload)
        except ValueError:
            self._fail(UpstreamError("The upstream engine sent a malformed stream event."))
            return
        if "error" in event or event.get("object") == "error":
            detail = event.get("error", event)
            message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
            self._fail(UpstreamError(f"The upstream engine failed mid-stream: {message}"))
            return
        self._translate(event)

    def _translate(self, event: dict) -> None:
        request = self._request
        for choice in event.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = choice.get("delta")
            text = (delta.get("content") if isinstance(delta, dict) else choice.get("text")) or ""
            logprobs = _logprobs(choice.get("logprobs"))
            reason = choice.get("finish_reason")
            calls = _tool_calls(delta.get("tool_calls") if isinstance(delta, dict) else None)
            if not text and reason is None and not logprobs and not calls:
                continue  # a role-only opening delta
            tokens = len(logprobs) if logprobs else (1 if text or calls else 0)
            self._sent_tokens += tokens
            self._last_index = index
            self._ready.append(GenerationChunk(
                request_id=request.request_id, index=index, text=text, token_ids=[], num_tokens=tokens,
                logprobs=logprobs if request.params.logprobs else None,
                finish_reason=_FINISH.get(reason, "stop") if reason is not None else None,
                stop_reason=choice.get("stop_reason"), tool_calls=calls))
        usage = event.get("usage")
        if isinstance(usage, dict) and "completion_tokens" in usage:
            self._usage = Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage["completion_tokens"]))

    def _end(self) -> None:
        """The last chunk carries the usage: the upstream's own count, or ours (text chunks as
        tokens; the prompt as counted before the call, else estimated) where it reports none."""
        usage = self._usage or Usage(prompt_tokens=self._prompt_tokens(), completion_tokens=self._sent_tokens)
        self._ready.append(GenerationChunk(request_id=self._request.request_id, index=self._last_index, text="",
                                           token_ids=[], usage=usage))
        self._finish_stream()

    def _fail(self, error: Exception) -> None:
        if not self._sent_tokens:
            self._finish_stream()
            raise error  # nothing reached the client: the router may retry elsewhere
        log.warning("upstream stream failed after %d tokens: %s", self._sent_tokens, error)
        self._ready.append(GenerationChunk(request_id=self._request.request_id, index=self._last_index, text="",
                                           token_ids=[], finish_reason="error",
                                           usage=Usage(self._prompt_tokens(), self._sent_tokens)))
        self._finish_stream()

    def _prompt_tokens(self) -> int:
        ids = self._request.prompt_ids
        return len(ids) if ids is not None else estimate_prompt_tokens(self._request.prompt)

    def _finish_stream(self) -> None:
        self._done = True
        self._watchdog.close()
        if self._response is not None:
            self._response.release()
        if self._opened:
            self._opened = False
            self._engine.inflight -= 1

    def _clean_end(self) -> bool:
        """Whether a stream that ends without `[DONE]` ended normally: never for OpenAI-style
        servers, which always send it (Triton's streams have no such marker)."""
        return False

    async def aclose(self) -> None:
        self._done = True
        self._watchdog.close()
        if self._response is not None:
            self._response.close()  # not released to the pool: the upstream sees the abort
        if self._opened:
            self._opened = False
            self._engine.inflight -= 1


async def _error_from(response: aiohttp.ClientResponse, flavor: str) -> Exception:
    """An upstream's refusal as the engine error it means (each server has its own error body)."""
    try:
        raw = await asyncio.wait_for(response.content.read(_MAX_ERROR_BODY), 5)
    except (asyncio.TimeoutError, aiohttp.ClientError):
        raw = b""
    message, param, code = f"HTTP {response.status}", None, None
    try:
        body = json.loads(raw)
        detail = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(detail, dict):
            message = str(detail.get("message") or message)
            param, code = detail.get("param"), detail.get("code")
        elif isinstance(detail, str):  # TGI: {"error": "...", "error_type": "validation"}
            message = detail
    except ValueError:
        message = raw[:500].decode("utf-8", "replace") or message
    status = response.status
    if status in (400, 413, 422):
        return InvalidRequestError(message, param if isinstance(param, str) else None,
                                   code if isinstance(code, str) else None)
    if status in (429, 503):
        retry = response.headers.get("retry-after", "1")
        return EngineOverloadedError(f"The upstream engine is at capacity: {message}",
                                     float(retry) if retry.replace(".", "", 1).isdigit() else 1.0)
    if status in (401, 403):
        return UpstreamError(f"The upstream engine ({flavor}) refused this server's credentials.")
    return UpstreamError(f"The upstream engine ({flavor}) answered {status}: {message}")


def _tool_calls(raw) -> list[ToolCallDelta] | None:
    """OpenAI's streamed `delta.tool_calls` (vLLM's `DeltaToolCall`) as ours."""
    if not isinstance(raw, list) or not raw:
        return None
    deltas = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        function = entry.get("function") if isinstance(entry.get("function"), dict) else {}
        name, arguments = function.get("name"), function.get("arguments")
        deltas.append(ToolCallDelta(index=int(entry.get("index") or 0),
                                    id=entry.get("id") if isinstance(entry.get("id"), str) else None,
                                    name=name if isinstance(name, str) else None,
                                    arguments=arguments if isinstance(arguments, str) else ""))
    return deltas or None


def _logprobs(raw) -> list[TokenLogprob] | None:
    """Chat (`content` entries) or legacy completions (parallel lists) logprobs, as ours."""
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("content"), list):
        return [TokenLogprob(token=e.get("token", ""), token_id=-1, logprob=e.get("logprob"),
                             bytes=e.get("bytes") or list(e.get("token", "").encode()),
                             top=[TopLogprob(t.get("token", ""), -1, t.get("logprob"),
                                             t.get("bytes") or list(t.get("token", "").encode()))
                                  for t in e.get("top_logprobs") or []])
                for e in raw["content"]]
    tokens = raw.get("tokens")
    if not isinstance(tokens, list):
        return None
    values = raw.get("token_logprobs") or [None] * len(tokens)
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return [TokenLogprob(token=t, token_id=-1, logprob=v, bytes=list(t.encode()),
                         top=[TopLogprob(k, -1, lp, list(k.encode())) for k, lp in (top or {}).items()])
            for t, v, top in zip(tokens, values, tops)]
