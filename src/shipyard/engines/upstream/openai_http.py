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
import hashlib
import contextlib
import json
import logging
import os
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.engines.base import Engine, EngineStats, GenerationRequest, ModelInfo, Prompt
from shipyard.engines.errors import EngineUnavailableError, InvalidRequestError
from shipyard.engines.tools.formats import detect_format, template_knows_tools
from shipyard.engines.tools.prompt import has_tool_turns, template_inputs
from shipyard.engines.upstream import shapes
from shipyard.engines.upstream.flavors import FLAVORS, VLLM_EXTRAS, Flavor
from shipyard.engines.upstream.stream import UpstreamStream

log = logging.getLogger("shipyard.upstream")


class OpenAIHTTPEngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: Literal["openai_http"] = "openai_http"
    url: str = Field(description="The server's base URL, without /v1 (e.g. http://10.0.0.5:8000)")
    flavor: Literal["openai", "vllm", "tgi", "sglang", "trtllm", "llamacpp", "llamacpp_python",
                    "shipyard", "triton"] = "openai"
    upstream_model: str | None = Field(None, description="The model's name at the upstream (default: ours)")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream's key")
    tokenizer: str | None = Field(None, description="Local tokenizer folder: exact token counts for limits")
    max_model_len: int | None = Field(None, ge=1, description="Default: what the upstream's /v1/models says")
    connect_timeout_s: float = Field(2.0, gt=0)
    first_token_timeout_s: float = Field(60.0, gt=0, description="No first token within this: 504")
    idle_timeout_s: float = Field(30.0, gt=0, description="Longest silence between chunks: 504")
    poll_interval_s: float = Field(2.0, gt=0, description="How often /health and /metrics are read")
    max_connections: int = Field(512, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an upstream is an http:// or https:// URL with a host")
        return url


def _secret(config: OpenAIHTTPEngineConfig) -> str | None:
    return os.environ.get(config.api_key_env) if config.api_key_env else None


class UpstreamClient:
    """The few HTTP calls an upstream needs, over one aiohttp session (pooled keep-alive
    connections; httpx measured 2-3 ms a call here, aiohttp a fraction of it)."""

    def __init__(self, base_url: str, api_key: str | None, connect_timeout_s: float, max_connections: int):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Reads are timed by the engine itself (first token, then between chunks); the session only
        # bounds connecting, so a slow first token is not mistaken for a broken upstream.
        self.session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300))

    async def get(self, path: str) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=self.connect_timeout_s * 2)
        async with self.session.get(self.base_url + path, timeout=timeout) as response:
            return response.status, await response.text()

    async def post_json(self, path: str, body: dict):
        timeout = aiohttp.ClientTimeout(total=self.connect_timeout_s * 2)
        async with self.session.post(self.base_url + path, json=body, timeout=timeout) as response:
            return response.status, (await response.json(content_type=None) if response.status == 200 else None)

    async def open_stream(self, path: str, body: dict) -> aiohttp.ClientResponse:
        return await self.session.post(self.base_url + path, json=body)

    async def close(self) -> None:
        await self.session.close()


class OpenAIHTTPEngine(Engine):
    deferred_errors = True

    def __init__(self, config: OpenAIHTTPEngineConfig, model_id: str, api_key: str | None = None):
        self.config = config
        self._api_key = api_key  # given directly (a launched worker's token), else from api_key_env
        self.flavor: Flavor = FLAVORS[config.flavor]
        self.model = ModelInfo(id=model_id, max_model_len=config.max_model_len or 0, owned_by=config.flavor)
        self.upstream_model = config.upstream_model or model_id
        self.client: UpstreamClient | None = None
        self._healthy = False
        self._stats = EngineStats(0, 0, 0.0, 0, 0)
        self._poller: asyncio.Task | None = None
        self._tokenizer = None
        self.inflight = 0  # requests this process has open upstream

    # ---------------------------------------------------------------- lifecycle
    def identity(self) -> str:
        return f"upstream:{self.config.url}:{self.upstream_model}"

    async def start(self) -> None:
        self.client = UpstreamClient(self.config.url, self._api_key or _secret(self.config),
                                     self.config.connect_timeout_s, self.config.max_connections)
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
            await self.client.close()
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
            status, _ = await client.get(flavor.health_path or "/v1/models")
            healthy = status == 200
            if healthy and not self.model.max_model_len:
                await self._learn_context_length()
            if healthy and flavor.metrics is not None:
                status, text = await client.get("/metrics")
                if status == 200:
                    self._stats = parse_load(text, flavor.metrics)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            healthy = False
        if healthy != self._healthy:
            log.info("upstream %s (%s) is %s", self.config.url, self.model.id, "up" if healthy else "DOWN")
        self._healthy = healthy

    async def _learn_context_length(self) -> None:
        status, text = await self.client.get("/v1/models")
        if status != 200:
            return
        for card in json.loads(text).get("data", []):
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
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return None

    def _encode_locally(self, prompt: Prompt, add_special_tokens: bool) -> list[int]:
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is not None:
            template = self._tokenizer.chat_template
            messages, tools = template_inputs(prompt, detect_format(template), template_knows_tools(template)) \
                if has_tool_turns(prompt) else ([{"role": m.role, "content": m.content} for m in prompt.messages], None)
            ids = self._tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self._tokenizer.encode(prompt.text or "", add_special_tokens=add_special_tokens)

    async def _encode_upstream(self, prompt: Prompt) -> list[int] | None:
        style, client = self.flavor.tokenize, self.client
        if style == "vllm":
            body = {"model": self.upstream_model}
            if prompt.messages is not None:
                body["messages"] = [shapes.message(m) for m in prompt.messages]
                if prompt.tools:
                    body["tools"] = [tool.openai() for tool in prompt.tools]
            else:
                body["prompt"] = prompt.text or ""
            status, answer = await client.post_json("/tokenize", body)
            return list(answer["tokens"]) if status == 200 else None
        if prompt.messages is not None or style is None:
            return None
        if style == "tgi":
            status, answer = await client.post_json("/tokenize", {"inputs": prompt.text or ""})
            return [t["id"] for t in answer] if status == 200 else None
        if style == "llamacpp_python":
            status, answer = await client.post_json("/extras/tokenize", {"input": prompt.text or ""})
        else:
            status, answer = await client.post_json("/tokenize", {"content": prompt.text or ""})
        return list(answer["tokens"]) if status == 200 else None

    # ---------------------------------------------------------------- requests
    def generate(self, request: GenerationRequest) -> UpstreamStream:
        if self.client is None:
            raise EngineUnavailableError("The upstream engine is not connected yet.")
        path, body = self.request_body(request)
        return UpstreamStream(self, request, path, body)

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
            body["messages"] = [shapes.message(m) for m in prompt.messages]
            body.update(shapes.shape_fields(request, flavor.name, self.model.id))
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
        for name, value in flavor.sampling_defaults.items():
            body.setdefault(name, value)
        if request.scope and flavor.cache_salt:  # the tenant, hashed: its prefix blocks are its own there too
            body["cache_salt"] = hashlib.blake2b(request.scope.encode(), digest_size=16).hexdigest()
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
