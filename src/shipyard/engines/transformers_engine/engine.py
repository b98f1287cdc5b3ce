"""The async face of the embedded engine: validates and enqueues on the event loop, runs the
step loop on a dedicated thread, and hands each step's chunks back in one loop callback."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator

import torch

from shipyard.engines.base import (
    Engine,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    Prompt,
    SamplingParams,
    Timings,
    path_identity,
)
from shipyard.engines.detokenizer import IncrementalDetokenizer, TokenTextCache
from shipyard.engines.errors import (
    ContextLengthExceededError,
    EngineOverloadedError,
    EngineUnavailableError,
    InvalidRequestError,
)
from shipyard.engines.transformers_engine.core import EngineCore
from shipyard.engines.transformers_engine.kv_cache import SlotKVCache
from shipyard.engines.transformers_engine.loader import LoadedModel, load_model
from shipyard.engines.transformers_engine.model_runner import ModelRunner
from shipyard.engines.transformers_engine.prefix_cache import PrefixCache
from shipyard.engines.transformers_engine.request_stream import RequestStream
from shipyard.engines.transformers_engine.sampler import Sampler
from shipyard.engines.transformers_engine.scheduler import Scheduler
from shipyard.engines.transformers_engine.sequence import Sequence, SequenceGroup
from shipyard.engines.settings import TransformersEngineConfig
from shipyard.engines.stop_strings import StopStringMatcher, StopStrings
from shipyard.engines.transformers_engine.output_shape import OutputShapes
from shipyard.engines.tools.prompt import has_tool_turns, template_inputs

log = logging.getLogger("shipyard.engine")

# No tokenizer makes a token out of more characters than this on average: a prompt longer than
# max_model_len × this cannot fit, and is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 32


class TransformersEngine(Engine):
    def __init__(self, config: TransformersEngineConfig, model_id: str):
        self.config = config
        self.model = ModelInfo(id=model_id, max_model_len=config.max_model_len or 0, created=int(time.time()))
        self._loaded: LoadedModel | None = None
        self._core: EngineCore | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, asyncio.Queue] = {}
        self._ready = False
        self._failed: BaseException | None = None
        self._identity: str | None = None
        self._shapes: OutputShapes | None = None  # structured outputs and tool calls, once loaded

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        torch.set_num_threads(self.config.num_threads)
        try:
            self._loaded, runner = await asyncio.to_thread(self._load_backend)
        except Exception as exc:  # never ready, and unhealthy, so an orchestrator restarts or alerts
            self._failed = exc
            raise
        loaded = self._loaded
        self.model.max_model_len = loaded.max_model_len
        self._token_text = TokenTextCache(loaded.tokenizer)
        self._core = EngineCore(
            runner,
            Scheduler(runner.cache, self.config.max_num_seqs, self.config.max_prefill_tokens),
            Sampler(loaded.vocab_size, self._token_text, loaded.device, self.config.confidence_scores,
                    loaded.max_model_len),
            loaded.max_model_len,
            self._prefix_cache(runner),
        )
        self._shapes = OutputShapes(loaded, self._core.sampler, self.config.tool_parser)
        self._thread = threading.Thread(target=self._run_loop, name="shipyard-engine", daemon=True)
        self._thread.start()
        self._ready = True
        log.info("loaded %s from %s on %s (context %d)", self.model.id, self.config.model, loaded.device, loaded.max_model_len)

    def _load_backend(self) -> tuple[LoadedModel, ModelRunner]:
        """Blocking: the weights, the tokenizer and what runs a step's forward over the KV cache.
        Other in-process backends (llama.cpp) override this and keep everything else."""
        config = self.config
        loaded = load_model(config.model, config.device, config.dtype, config.max_model_len, config.quantization)
        cache = SlotKVCache(loaded.num_layers, config.max_num_seqs, loaded.max_model_len)
        return loaded, ModelRunner(loaded.model, cache, loaded.device)

    def _prefix_cache(self, runner) -> PrefixCache | None:
        mib = self.config.prefix_cache_mib
        return PrefixCache(runner.cache, int(mib * 2**20), self.config.prefix_block_size) if mib else None

    async def stop(self) -> None:
        self._ready = False
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        for stream in self._streams.values():
            stream.put_nowait(EngineUnavailableError("engine stopped"))
        self._streams.clear()
        if self._core is not None and not (self._thread and self._thread.is_alive()):
            self._core.runner.close()  # native memory (llama.cpp) goes now, not at exit

    def ready(self) -> bool:
        return self._ready and self._failed is None

    async def health(self) -> bool:
        return self._failed is None and (self._thread is None or self._thread.is_alive())

    def compute_units(self) -> tuple[str, float] | None:
        if self._loaded is None:
            return None
        device = self._loaded.device
        return ("gpu", 1.0) if device.type == "cuda" else ("cpu", float(self.config.num_threads))

    def stats(self) -> EngineStats:
        core = self._core
        if core is None:
            return EngineStats(0, 0, 0.0, self.config.max_num_seqs, self.config.max_waiting)
        scheduler, prefix = core.scheduler, core.prefix_cache
        capacity = self.config.max_num_seqs * max(self.model.max_model_len, 1)
        return EngineStats(
            num_waiting=len(scheduler.waiting) + self._inbox.qsize(),
            num_running=scheduler.num_running_requests,
            kv_cache_usage=min(1.0, scheduler.kv_tokens_used() / capacity),
            max_num_seqs=self.config.max_num_seqs,
            max_waiting=self.config.max_waiting,
            busy_s=core.busy_s,
            prefix_cache_queries=prefix.queries if prefix else 0,
            prefix_cache_hits=prefix.hits if prefix else 0,
        )

    @property
    def tokenizer(self):
        if self._loaded is None:
            raise EngineUnavailableError("model not loaded")
        return self._loaded.tokenizer

    # ---------------------------------------------------------------- requests
    def encode_prompt(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int]:
        """Blocking: call through `encode()` from the event loop."""
        tokenizer = self.tokenizer
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            bad = [t for t in ids if not 0 <= t < len(tokenizer)]
            if bad:
                raise InvalidRequestError(f"Token id {bad[0]} is outside the vocabulary (0..{len(tokenizer) - 1}).", "prompt")
            return ids
        try:
            if prompt.messages is not None:
                tools = None
                if has_tool_turns(prompt):
                    messages, tools = template_inputs(prompt, self._shapes.format, self._shapes.native_tools)
                else:
                    messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
                try:
                    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                        tokenize=True)
                except Exception as exc:  # a template may reject role orders it does not support
                    raise InvalidRequestError(f"The model's chat template rejected these messages: {exc}",
                                              "messages") from exc
                return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            return tokenizer.encode(prompt.text or "", add_special_tokens=add_special_tokens)
        except (UnicodeError, TypeError) as exc:  # e.g. a lone surrogate, which no tokenizer can encode
            raise InvalidRequestError("The prompt is not valid Unicode text.", "prompt", "invalid_value") from exc

    def check_prompt_size(self, prompt: Prompt) -> None:
        """Cheap, before tokenizing: refuse text that cannot fit the context window."""
        max_len = self.model.max_model_len or self.config.max_model_len
        if not max_len:
            return
        if prompt.token_ids is not None:
            size, unit = len(prompt.token_ids), "tokens"
            limit = max_len
        else:
            texts = [prompt.text or ""] if prompt.messages is None else [m.content for m in prompt.messages]
            size, unit = sum(len(t) for t in texts), "characters"
            limit = max_len * MAX_CHARS_PER_TOKEN
        if size > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens; a prompt of {size} {unit} cannot fit.",
                "messages" if prompt.messages is not None else "prompt", "context_length_exceeded")

    async def encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int]:
        self.check_prompt_size(prompt)
        self.tokenizer  # noqa: B018 - not loaded yet: EngineUnavailableError before the thread hop
        return await asyncio.to_thread(self.encode_prompt, prompt, add_special_tokens)

    async def prepare(self, prompt: Prompt, params: SamplingParams) -> None:
        from shipyard.engines.grammar import needs_grammar

        if needs_grammar(prompt, params):
            self.tokenizer  # noqa: B018 - not loaded yet: EngineUnavailableError before the thread hop
            await asyncio.to_thread(self._shapes.grammar, prompt, params)

    async def decode(self, token_ids: list[int]) -> str:
        tokenizer = self.tokenizer
        bad = [t for t in token_ids if not 0 <= t < len(tokenizer)]
        if bad:
            raise InvalidRequestError(f"Token id {bad[0]} is outside the vocabulary (0..{len(tokenizer) - 1}).", "tokens")
        return await asyncio.to_thread(tokenizer.decode, token_ids)

    def identity(self) -> str:
        if self._identity is None:
            self._identity = f"{type(self).__name__}:{path_identity(self.config.model)}:{self.config.model_dump_json()}"
        return self._identity

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [self._token_text.get(t)[0] for t in token_ids]

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.ready():
            raise EngineUnavailableError("The model is not loaded yet.")
        params = request.params
        if request.prompt_ids is not None:
            prompt_ids = request.prompt_ids
        else:
            self.check_prompt_size(request.prompt)
            prompt_ids = self.encode_prompt(request.prompt)
        if not prompt_ids:
            raise InvalidRequestError("The prompt is empty.", "prompt")
        max_len = self.model.max_model_len
        if len(prompt_ids) >= max_len + (params.max_tokens == 0):  # scoring alone may fill the window
            raise ContextLengthExceededError(len(prompt_ids), params.max_tokens, max_len)
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > max_len:
            raise ContextLengthExceededError(len(prompt_ids), params.max_tokens, max_len)
        if params.n > self.config.max_n:
            raise InvalidRequestError(f"n must be at most {self.config.max_n}.", "n")
        if params.n > self.config.max_num_seqs:
            raise InvalidRequestError(f"n must be at most {self.config.max_num_seqs} (KV-cache slots).", "n")
        vocab = self._core.sampler.vocab_size
        bad_bias = [t for t in params.logit_bias if not 0 <= t < vocab]
        if bad_bias:
            raise InvalidRequestError(f"logit_bias names token {bad_bias[0]}, outside the vocabulary.", "logit_bias")
        if request.request_id in self._streams:  # ids are the server's own: a repeat is a bug, never a merge
            raise InvalidRequestError(f"Engine request id {request.request_id!r} is already in use.", None)
        if self.stats().num_waiting >= self.config.max_waiting:
            raise EngineOverloadedError(
                f"The server is at capacity ({self.config.max_waiting} requests waiting); retry shortly."
            )

        group = self._build_group(request, prompt_ids)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = stream
        self._inbox.put(("add", group))
        self._wake.set()
        return RequestStream(request.request_id, stream, self._abandon)

    def _build_group(self, request: GenerationRequest, prompt_ids: list[int]) -> SequenceGroup:
        params = request.params
        max_tokens = params.max_tokens if params.max_tokens is not None else self.model.max_model_len - len(prompt_ids)
        sequences = []
        stops = StopStrings(params.stop)  # one automaton, shared by the request's choices
        shapes, prompt = self._shapes, request.prompt
        grammar = shapes.grammar(prompt, params)  # remembered since prepare(): a copy
        skip_special = shapes.skip_special_tokens(prompt, params)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                # Choice 0 uses the seed itself, so n=1 and n>1 agree on the first choice.
                generator = torch.Generator(device=self._loaded.device).manual_seed(
                    (params.seed + index * 1_000_003) % (2**63))  # beside the logits it draws from
            sequences.append(
                Sequence(
                    request_id=request.request_id,
                    index=index,
                    prompt_ids=prompt_ids,
                    params=params,
                    max_tokens=max_tokens,
                    eos_token_ids=self._loaded.eos_token_ids,
                    detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids, skip_special),
                    stop_matcher=StopStringMatcher(stops),
                    timings=Timings(arrival=request.arrival_time or time.monotonic()),
                    generator=generator,
                    matcher=shapes.matcher(grammar),
                    tool_parser=shapes.tool_parser(prompt, params),
                )
            )
        return SequenceGroup(request_id=request.request_id, sequences=sequences, prompt_ids=prompt_ids,
                             cache_salt=request.scope)

    async def _abandon(self, request_id: str) -> None:
        """Its reader left: nothing more is delivered, and the request stops."""
        self._streams.pop(request_id, None)
        await self.cancel(request_id)

    async def cancel(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    # ---------------------------------------------------------------- engine thread
    def _run_loop(self) -> None:
        torch.set_num_threads(self.config.num_threads)
        try:
            # Inference mode for the thread's whole life: cache tensors created here stay writable here.
            with torch.inference_mode():
                self._loop_forever()
        except BaseException as exc:  # the loop itself broke: report unhealthy rather than hang
            self._failed = exc
            log.exception("engine loop died")

    def _loop_forever(self) -> None:
        core = self._core
        while not self._stopping:
            chunks: list[GenerationChunk] = []
            while True:
                try:
                    kind, payload = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if kind == "add":
                    core.scheduler.add(payload)
                else:
                    chunks += core.abort(payload)
            if core.scheduler.has_work():
                try:
                    chunks += self._steps(core)
                except Exception:  # a broken step must not hang every client
                    log.exception("engine step failed; failing in-flight requests")
                    chunks += core.fail_all()
            elif not chunks:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            self._deliver(chunks)

    def _steps(self, core: EngineCore) -> list[GenerationChunk]:
        """One step (llama.cpp's engine may run several, delivering as it goes)."""
        return core.step()

    def _interrupted(self) -> bool:
        """Whether the engine thread has something else to do than stepping (a request came or went)."""
        return self._stopping or not self._inbox.empty()

    def _deliver(self, chunks: list[GenerationChunk]) -> None:
        # One loop callback per step, however many requests it served.
        if chunks and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, chunks)

    def _dispatch(self, chunks: list[GenerationChunk]) -> None:
        for chunk in chunks:
            stream = self._streams.get(chunk.request_id)
            if stream is None:
                continue
            stream.put_nowait(chunk)
            if chunk.usage is not None:  # the request's last chunk
                self._streams.pop(chunk.request_id, None)
