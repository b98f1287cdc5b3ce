"""The one interface every inference backend implements.

A request goes in as a `GenerationRequest` (a prompt as text, token ids or chat messages, plus
`SamplingParams`); an async stream of `GenerationChunk`s comes out, one per generated token
(or per upstream delta for remote engines), the last one carrying `finish_reason` and `usage`.
Backends differ in where tokens come from (the embedded PyTorch engine, vLLM/TGI/SGLang over
HTTP, llama.cpp in-process), never in this shape: routing, caching and the api layer only see it.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.structured import ResponseFormat, Tool, ToolCall, ToolCallDelta

FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]


@dataclass(slots=True)
class SamplingParams:
    """Per-request sampling, honoured exactly whatever else shares the batch."""

    max_tokens: int | None = None  # None: up to the context window; 0: score the prompt only
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    skip_special_tokens: bool = True
    # Logprobs of every prompt token (the first has none): None = not wanted, k = with the top k.
    prompt_logprobs: int | None = None
    # The output's shape (engines/structured.py): a JSON schema to keep to, and how tools are called
    response_format: ResponseFormat | None = None
    tool_choice: str = "auto"  # "none" | "auto" | "required" | "named" (then `tool_name`)
    tool_name: str | None = None
    parallel_tool_calls: bool = True


@dataclass(slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None


@dataclass(slots=True)
class Prompt:
    """Exactly one of `text`, `token_ids` or `messages` is set."""

    text: str | None = None
    token_ids: list[int] | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None  # the functions a chat's model may call (rendered into its prompt)

    def as_text(self) -> str | None:
        """The prompt as text, for embeddings and descriptors (None for token-id prompts)."""
        if self.messages is not None:
            return "\n".join(m.content for m in self.messages)
        return self.text


@dataclass(slots=True)
class GenerationRequest:
    request_id: str  # unique per engine request, made by the server (never a client's id)
    prompt: Prompt
    params: SamplingParams
    arrival_time: float = 0.0  # time.monotonic() when the server received it
    prompt_ids: list[int] | None = None  # from `Engine.encode()`, so the prompt is tokenized once
    priority: int = 0  # the caller's tier: routing may keep replica pools by it
    scope: str = ""  # an opaque partition (the tenant): anything remembered is never shared across it
    cache_control: str | None = None  # "no-cache": do not reuse a stored answer; "no-store": nor keep this one
    max_retries: int | None = None  # routing's retries on other replicas (None: the deployment's policy)


@dataclass(slots=True)
class TopLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: list[int]


@dataclass(slots=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float | None  # None only for a prompt's first token, which nothing predicts
    bytes: list[int]
    top: list[TopLogprob]
    rank: int | None = None  # 1 = the most likely token (prompt logprobs)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    # Engine time spent on this request: each step's duration shared among the rows it computed.
    compute_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Timings:
    """Monotonic timestamps (seconds) of one choice's life in the engine."""

    arrival: float
    scheduled: float | None = None  # left the waiting queue
    first_token: float | None = None
    finished: float | None = None

    @property
    def queue_time(self) -> float | None:
        return None if self.scheduled is None else self.scheduled - self.arrival


@dataclass(slots=True)
class GenerationChunk:
    """New output of one choice since its previous chunk.

    `text` is already stop-string-safe: text that might still turn into a stop string is held
    back, and a matched stop string is never sent. `usage` is set on the request's last chunk
    (after every choice has finished) and counts all choices.
    """

    request_id: str
    index: int  # choice index, 0..n-1
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token that ended it
    usage: Usage | None = None
    timings: Timings | None = None
    # Tokens this chunk carries when their ids are unknown (an upstream that streams text only).
    num_tokens: int = 0
    served_by: str | None = None  # on a routed request's first chunk: the replica, or the fallback
    cache: str | None = None  # on a cached deployment's first chunk: hit, semantic, miss or bypass
    cache_similarity: float | None = None  # with a semantic hit: the prompts' cosine similarity
    # On the request's first chunk when `prompt_logprobs` was asked: one entry per prompt token.
    prompt_logprobs: list[TokenLogprob] | None = None
    # On a choice's last chunk, from engines that measure it: mean_logprob, min_logprob,
    # mean_entropy and tokens (the model's confidence in what it wrote; see monitor/confidence.py)
    confidence: dict | None = None
    # Tool calls, parsed from the output (or an upstream's deltas), in OpenAI's streamed shape
    tool_calls: list[ToolCallDelta] | None = None


@dataclass(slots=True)
class EngineStats:
    num_waiting: int
    num_running: int
    kv_cache_usage: float  # 0..1
    max_num_seqs: int
    max_waiting: int
    # KV prefix sharing, in prompt tokens since start (vLLM's counters): looked up, and found
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    busy_s: float = 0.0  # seconds the engine spent computing steps since start (0: not measured)


@dataclass(slots=True)
class ModelInfo:
    id: str
    max_model_len: int
    owned_by: str = "shipyard"
    created: int = 0


class Engine(abc.ABC):
    """An inference backend. All methods are called from the server's event loop."""

    model: ModelInfo
    # True when errors may come with the first chunk rather than from `generate()` (a remote or
    # routed engine): the server then waits for that chunk before it answers, so such errors
    # still get their own HTTP status.
    deferred_errors: bool = False

    @property
    def remote(self) -> bool:
        """Whether a failure mid-generation is an upstream's (502) rather than this server's (500)."""
        return self.deferred_errors

    @abc.abstractmethod
    async def start(self) -> None:
        """Load weights / connect; `ready()` is true once this returns."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Abort in-flight requests and release resources."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Validate and enqueue `request`, then stream its chunks.

        Validation errors (`InvalidRequestError`, `ContextLengthExceededError`) and a full
        queue (`EngineOverloadedError`) are raised before the first chunk. Closing the
        iterator early cancels the request and frees its slot.
        """

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Abort a request; its stream ends with finish_reason "abort"."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """True once the model is loaded and the engine can take requests."""

    @abc.abstractmethod
    async def health(self) -> bool:
        """True while the engine is working (its loop alive, its upstream answering)."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Live queue and cache figures."""

    async def encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int] | None:
        """The prompt's token ids, computed off the event loop, where the engine can tell (else
        None). Bounds are checked before any work, so a huge prompt costs nothing. Passing the
        result as `GenerationRequest.prompt_ids` spares the engine a second tokenization."""
        return None

    async def prepare(self, prompt: Prompt, params: SamplingParams) -> None:
        """Before `generate()`: whatever the request's output shape needs built (a grammar,
        compiled off the event loop and remembered), refused here with `InvalidRequestError`
        when it cannot be. Engines that keep no grammar (upstreams) pass it on as it is."""

    async def decode(self, token_ids: list[int]) -> str:
        """Token ids → text (vLLM's /detokenize)."""
        raise InvalidRequestError("This engine cannot detokenize.", "tokens", "unsupported")

    def token_strings(self, token_ids: list[int]) -> list[str] | None:
        """The vocabulary's spelling of each id, where known."""
        return None

    def compute_units(self) -> tuple[str, float] | None:
        """What this engine computes on, for compute-time cost: ("gpu", GPUs) or ("cpu", cores);
        None where it is not this server's hardware (an upstream) or not measured."""
        return None

    def identity(self) -> str:
        """What names the model behind this engine: a cached answer is only reused while this
        stays the same, so a new model version (other weights, another upstream) never serves an
        old answer."""
        return f"{type(self).__name__}:{self.model.id}"


def path_identity(path: str) -> str:
    """A local model file or folder as its files' names, sizes and modification times: cheap,
    and changed by any rewrite of the weights."""
    import hashlib
    import os

    root = os.path.expanduser(path)
    digest = hashlib.sha256(root.encode())
    files = [root] if os.path.isfile(root) else sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
    for name in files:
        try:
            stat = os.stat(name)
        except OSError:
            continue
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def estimate_prompt_tokens(prompt: Prompt) -> int:
    """When no tokenizer is at hand (a remote engine without /tokenize): about four characters a
    token, as OpenAI's own rule of thumb. Limits reserve with it and settle to the upstream's
    reported usage."""
    if prompt.token_ids is not None:
        return len(prompt.token_ids)
    texts = [prompt.text or ""] if prompt.messages is None else [m.content for m in prompt.messages]
    for message in prompt.messages or []:
        texts += [call.name + call.arguments for call in message.tool_calls or []]
    texts += [json.dumps(tool.openai()) for tool in prompt.tools or []]
    return max(1, (sum(len(t) for t in texts) + 3) // 4 + (4 * len(prompt.messages or [])))
