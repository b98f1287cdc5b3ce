"""An engine that runs elsewhere and speaks OpenAI's API: vLLM, TGI, SGLang, trtllm-serve,
llama.cpp's server, a Shipyard worker or a hosted API, behind the one `Engine` interface.

Every request is streamed from the upstream (`stream: true` with `include_usage`), whatever the
client asked, so time to first token, aborts (closing the connection makes vLLM and the others
abort) and early ends work the same for every backend. Upstream answers become engine errors the
router can act on: refused connections and 429/503 are retriable elsewhere, 400/422 are the
request's fault, 5xx and malformed streams are the upstream's (502), silence is a timeout (504).
Load and health come from the upstream's own `/health` and `/metrics` (flavors.py), polled in the
background, in the same `EngineStats` the embedded engine reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from typing import Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from shipyard.engines.base import (
    Engine,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    Prompt,
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
from shipyard.engines.upstream.flavors import FLAVORS, VLLM_EXTRAS, Flavor

log = logging.getLogger("shipyard.upstream")

_FINISH = {"stop": "stop", "length": "length", "eos_token": "stop", "stop_sequence": "stop", "abort": "abort",
           "content_filter": "stop", "tool_calls": "stop"}
_MAX_ERROR_BODY = 64 * 1024


class OpenAIHTTPEngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: Literal["openai_http"] = "openai_http"
    url: str = Field(description="The server's base URL, without /v1 (e.g. http://10.0.0.5:8000)")
    flavor: Literal["openai", "vllm", "tgi", "sglang", "trtllm", "llamacpp", "shipyard"] = "openai"
    upstream_model: str | None = Field(None, description="The model's name at the upstream (default: ours)")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream's key")
    tokenizer: str | None = Field(None, description="Local tokenizer folder: exact token counts for limits")
    max_model_len: int | None = Field(None, ge=1, description="Default: what the upstream's /v1/models says")
    connect_timeout_s: float = Field(2.0, gt=0)
    first_token_timeout_s: float = Field(60.0, gt=0, description="No first token within this: 504")
    idle_timeout_s: float = Field(30.0, gt=0, description="Longest silence between chunks: 504")
    poll_interval_s: float = Field(2.0, gt=0, description="How often /health and /metrics are read")
    max_connections: int = Field(512, ge=1)


def _secret(config: OpenAIHTTPEngineConfig) -> str | None:
    return os.environ.get(config.api_key_env) if config.api_key_env else None


class OpenAIHTTPEngine(Engine):
    deferred_errors = True

    def __init__(self, config: OpenAIHTTPEngineConfig, model_id: str):
        self.config = config
        self.flavor: Flavor = FLAVORS[config.flavor]
        self.model = ModelInfo(id=model_id, max_model_len=config.max_model_len or 0, owned_by=config.flavor)
        self.upstream_model = config.upstream_model or model_id
        self.client: httpx.AsyncClient | None = None
        self._healthy = False
        self._stats = EngineStats(0, 0, 0.0, 0, 0)
        self._poller: asyncio.Task | None = None
        self._tokenizer = None
        self.inflight = 0  # requests this process has open upstream

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        headers = {}
        key = _secret(self.config)
        if key:
            headers["authorization"] = f"Bearer {key}"
        # Reads are timed by this engine itself (first token, then between chunks); httpx only
        # bounds connecting, so a slow first token is not mistaken for a broken upstream.
        timeout = httpx.Timeout(None, connect=self.config.connect_timeout_s)
        limits = httpx.Limits(max_connections=self.config.max_connections,
                              max_keepalive_connections=self.config.max_connections)
        self.client = httpx.AsyncClient(base_url=self.config.url.rstrip("/"), headers=headers, timeout=timeout,
                                        limits=limits)
        if self.config.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.config.tokenizer)
        await self.poll()
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.client is not None:
            await self.client.aclose()
        self._healthy = False

    def ready(self) -> bool:
        """The upstream answers its health check (as of the last poll)."""
        return self.client is not None and self._healthy

    async def health(self) -> bool:
        """This side works (the poller runs); an upstream that is down makes the replica not
        ready, never this process unhealthy: restarting the gateway would not bring it back."""
        return self._poller is None or not self._poller.done()

    def stats(self) -> EngineStats:
        stats = self._stats
        if self.flavor.metrics is None:  # no load figures upstream: what this process has open
            return EngineStats(0, self.inflight, 0.0, stats.max_num_seqs, stats.max_waiting)
        return stats

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            await self.poll()

    async def poll(self) -> None:
        """One health check (and, where the upstream has them, its load figures)."""
        client, flavor = self.client, self.flavor
        try:
            path = flavor.health_path or "/v1/models"
            response = await client.get(path, timeout=self.config.connect_timeout_s)
            healthy = response.status_code == 200
            if healthy and not self.model.max_model_len:
                await self._learn_context_length()
            if healthy and flavor.metrics is not None:
                metrics = await client.get("/metrics", timeout=self.config.connect_timeout_s)
                if metrics.status_code == 200:
                    self._stats = parse_load(metrics.text, flavor.metrics)
        except (httpx.HTTPError, ValueError):
            healthy = False
        if healthy != self._healthy:
            log.info("upstream %s (%s) is %s", self.config.url, self.model.id, "up" if healthy else "DOWN")
        self._healthy = healthy

    async def _learn_context_length(self) -> None:
        response = await self.client.get("/v1/models", timeout=self.config.connect_timeout_s)
        if response.status_code != 200:
            return
        for card in response.json().get("data", []):
            if card.get("id") == self.upstream_model and isinstance(card.get("max_model_len"), int):
                self.model.max_model_len = card["max_model_len"]

    # ---------------------------------------------------------------- tokens
    async def encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int] | None:
        """Exact where possible: a local copy of the tokenizer, else the upstream's /tokenize,
        else None (the gateway estimates, and settles to the upstream's reported usage)."""
        if self._tokenizer is not None:
            return await asyncio.to_thread(self._encode_locally, prompt, add_special_tokens)
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        try:
            return await self._encode_upstream(prompt)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def _encode_locally(self, prompt: Prompt, add_special_tokens: bool) -> list[int]:
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            ids = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self._tokenizer.encode(prompt.text or "", add_special_tokens=add_special_tokens)

    async def _encode_upstream(self, prompt: Prompt) -> list[int] | None:
        style, client = self.flavor.tokenize, self.client
        timeout = self.config.connect_timeout_s
        if style == "vllm":
            body = {"model": self.upstream_model}
            if prompt.messages is not None:
                body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
            else:
                body["prompt"] = prompt.text or ""
            response = await client.post("/tokenize", json=body, timeout=timeout)
            return list(response.json()["tokens"]) if response.status_code == 200 else None
        if prompt.messages is not None or style is None:
            return None
        if style == "tgi":
            response = await client.post("/tokenize", json={"inputs": prompt.text or ""}, timeout=timeout)
            return [t["id"] for t in response.json()] if response.status_code == 200 else None
        response = await client.post("/tokenize", json={"content": prompt.text or ""}, timeout=timeout)
        return list(response.json()["tokens"]) if response.status_code == 200 else None

    # ---------------------------------------------------------------- requests
    def generate(self, request: GenerationRequest) -> _UpstreamStream:
        if self.client is None:
            raise EngineUnavailableError("The upstream engine is not connected yet.")
        path, body = self.request_body(request)
        return _UpstreamStream(self, request, path, body)

    def request_body(self, request: GenerationRequest) -> tuple[str, dict]:
        """The upstream call for a request, or InvalidRequestError for what this server cannot do."""
        p, prompt, flavor = request.params, request.prompt, self.flavor
        if flavor.max_n is not None and p.n > flavor.max_n:
            raise InvalidRequestError(f"n must be at most {flavor.max_n} for this deployment's engine "
                                      f"({flavor.name}).", "n")
        if p.prompt_logprobs is not None:
            raise InvalidRequestError(f"prompt_logprobs (and echo with logprobs) are not supported by this "
                                      f"deployment's engine ({flavor.name}).", "prompt_logprobs",
                                      "unsupported_parameter")
        body: dict = {"model": self.upstream_model, "stream": True, "stream_options": {"include_usage": True}}
        if prompt.messages is not None:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
            if p.logprobs:
                body["logprobs"] = True
                if p.top_logprobs:
                    body["top_logprobs"] = p.top_logprobs
        else:
            if not flavor.completions:
                raise InvalidRequestError(f"This deployment's engine ({flavor.name}) serves chat only.", "prompt")
            path = "/v1/completions"
            body["prompt"] = self._prompt_for_upstream(prompt)
            if p.logprobs:
                body["logprobs"] = p.top_logprobs
        if p.max_tokens is not None:
            body["max_tokens"] = p.max_tokens
        body["temperature"] = p.temperature
        body["top_p"] = p.top_p
        if p.n != 1:
            body["n"] = p.n
        for name, value in (("stop", p.stop), ("seed", p.seed), ("presence_penalty", p.presence_penalty),
                            ("frequency_penalty", p.frequency_penalty)):
            if value:
                body[name] = value
        if p.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
        for name, (default, _) in VLLM_EXTRAS.items():
            value = getattr(p, name)
            if value == default:
                continue
            field = flavor.extras.get(name)
            if field is None:
                raise InvalidRequestError(f"'{name}' is not supported by this deployment's engine ({flavor.name}).",
                                          name, "unsupported_parameter")
            body[field] = value
        return path, body

    def _prompt_for_upstream(self, prompt: Prompt) -> str | list[int]:
        if prompt.token_ids is None:
            return prompt.text or ""
        if self.flavor.token_id_prompts:
            return list(prompt.token_ids)
        if self._tokenizer is not None:
            return self._tokenizer.decode(prompt.token_ids)
        raise InvalidRequestError(f"Token-id prompts are not supported by this deployment's engine "
                                  f"({self.flavor.name}) without a local tokenizer.", "prompt")

    async def cancel(self, request_id: str) -> None:
        """Upstream requests end when their stream is closed (`aclose`), which is how a client's
        disconnect reaches vLLM, TGI and the others."""


class _UpstreamStream:
    """One upstream call, as engine chunks. Errors before the first chunk are raised from the
    first `__anext__` (the router may try another replica); after it, the stream ends with an
    "error" chunk, since tokens have gone to the client."""

    def __init__(self, engine: OpenAIHTTPEngine, request: GenerationRequest, path: str, body: dict):
        self._engine = engine
        self._request = request
        self._path, self._body = path, body
        self._response: httpx.Response | None = None
        self._lines = None
        self._ready: deque[GenerationChunk] = deque()
        self._done = False
        self._sent_tokens = 0
        self._usage: Usage | None = None
        self._last_index = 0
        self._opened = False

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
            request = engine.client.build_request("POST", self._path, json=self._body)
            response = await asyncio.wait_for(engine.client.send(request, stream=True),
                                              engine.config.first_token_timeout_s)
        except asyncio.TimeoutError:
            await self.aclose()
            raise EngineTimeoutError(f"The upstream engine did not answer within "
                                     f"{engine.config.first_token_timeout_s:g} s.") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            await self.aclose()
            raise EngineUnavailableError(f"The upstream engine at {engine.config.url} refused the connection.") from exc
        except httpx.HTTPError as exc:
            await self.aclose()
            raise UpstreamError(f"The upstream engine failed: {type(exc).__name__}.") from exc
        self._response = response
        if response.status_code != 200:
            error = await _error_from(response, engine.flavor.name)
            await self.aclose()
            raise error
        self._lines = response.aiter_lines()

    async def _read_event(self) -> None:
        engine = self._engine
        timeout = engine.config.idle_timeout_s if self._sent_tokens else engine.config.first_token_timeout_s
        try:
            line = await asyncio.wait_for(anext(self._lines), timeout)
        except StopAsyncIteration:
            self._end()
            return
        except asyncio.TimeoutError:
            self._fail(EngineTimeoutError(f"The upstream engine went silent for {timeout:g} s."))
            return
        except httpx.HTTPError as exc:
            self._fail(UpstreamError(f"The upstream stream broke: {type(exc).__name__}."))
            return
        line = line.strip()
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
            if not text and reason is None and not logprobs:
                continue  # a role-only opening delta
            tokens = len(logprobs) if logprobs else (1 if text else 0)
            self._sent_tokens += tokens
            self._last_index = index
            self._ready.append(GenerationChunk(
                request_id=request.request_id, index=index, text=text, token_ids=[], num_tokens=tokens,
                logprobs=logprobs if request.params.logprobs else None,
                finish_reason=_FINISH.get(reason, "stop") if reason is not None else None,
                stop_reason=choice.get("stop_reason")))
        usage = event.get("usage")
        if isinstance(usage, dict) and "completion_tokens" in usage:
            self._usage = Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage["completion_tokens"]))

    def _end(self) -> None:
        """The last chunk carries the usage: the upstream's own count, or ours (text chunks as
        tokens, the prompt estimated) where it reports none."""
        usage = self._usage or Usage(prompt_tokens=estimate_prompt_tokens(self._request.prompt),
                                     completion_tokens=self._sent_tokens)
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
                                           usage=Usage(estimate_prompt_tokens(self._request.prompt),
                                                       self._sent_tokens)))
        self._finish_stream()

    def _finish_stream(self) -> None:
        self._done = True
        if self._response is not None:
            asyncio.ensure_future(self._response.aclose())
        if self._opened:
            self._opened = False
            self._engine.inflight -= 1

    async def aclose(self) -> None:
        self._done = True
        if self._response is not None:
            await self._response.aclose()
        if self._opened:
            self._opened = False
            self._engine.inflight -= 1


async def _error_from(response: httpx.Response, flavor: str) -> Exception:
    """An upstream's refusal as the engine error it means (each server has its own error body)."""
    raw = b""
    async for part in response.aiter_bytes():
        raw += part
        if len(raw) > _MAX_ERROR_BODY:
            break
    message, param, code = f"HTTP {response.status_code}", None, None
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
    status = response.status_code
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


def parse_load(text: str, names: tuple[str | None, str | None, str | None]) -> EngineStats:
    """An upstream's Prometheus text → EngineStats (gauges summed over their label sets)."""
    values = {name: 0.0 for name in names if name}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    waiting, running, kv = names
    usage = values.get(kv, 0.0) if kv else 0.0
    return EngineStats(num_waiting=int(values.get(waiting, 0) if waiting else 0),
                       num_running=int(values.get(running, 0) if running else 0),
                       kv_cache_usage=min(1.0, usage / 100 if usage > 1 else usage), max_num_seqs=0, max_waiting=0)
