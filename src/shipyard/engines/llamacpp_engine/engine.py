"""The embedded engine with llama.cpp doing the forward pass: any GGUF file, in process.

Everything but the forward is the embedded engine's own (`TransformersEngine`): the scheduler's
continuous batching, the sampler (seeds, penalties, logprobs), exact stop strings, incremental
detokenizing, cancellation and the API's limits. So a GGUF deployment answers exactly like a
Hugging Face one, and several sequences decode in one `llama_decode` call.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shipyard.engines.base import GenerationChunk
from shipyard.engines.llamacpp_engine.bursts import DecodeBursts
from shipyard.engines.llamacpp_engine.decode_loop import DecodeLoop, library
from shipyard.engines.llamacpp_engine.native import NativeLlama
from shipyard.engines.llamacpp_engine.runner import LlamaCppRunner
from shipyard.engines.llamacpp_engine.slots import SequenceSlots
from shipyard.engines.settings import LlamaCppEngineConfig
from shipyard.engines.transformers_engine.core import EngineCore
from shipyard.engines.transformers_engine.engine import TransformersEngine
from shipyard.engines.transformers_engine.loader import LoadedModel, ensure_chat_template, eos_token_ids


class LlamaCppEngine(TransformersEngine):
    config: LlamaCppEngineConfig
    _bursts: DecodeBursts | None | bool = None  # False: the C loop is off or unavailable

    def _load_backend(self) -> tuple[LoadedModel, LlamaCppRunner]:
        config = self.config
        path = Path(config.model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a GGUF file")
        tokenizer = load_tokenizer(path, config.tokenizer)
        native = NativeLlama(path, n_seq=config.max_num_seqs, seq_len=config.max_model_len,
                             n_batch=config.max_prefill_tokens + config.max_num_seqs,
                             n_threads=config.num_threads, n_gpu_layers=config.gpu_layers,
                             flash_attn=config.flash_attn)
        loaded = LoadedModel(
            model=native,
            tokenizer=tokenizer,
            device=torch.device("cpu"),
            max_model_len=native.seq_len,
            eos_token_ids=eos_token_ids(tokenizer) | native.eog_tokens(),
            vocab_size=min(len(tokenizer), native.n_vocab),
            num_layers=0,
        )
        if config.decode_loop:
            library()  # built (once per machine) while loading, not in the first request's step
        return loaded, LlamaCppRunner(native, config.max_num_seqs)

    def _prefix_cache(self, runner: LlamaCppRunner) -> SequenceSlots | None:
        """Prompts start from the longest prefix a slot holds (slots.py): llama.cpp's cells, no pool."""
        return runner.cache if self.config.prefix_reuse else None

    def _steps(self, core: EngineCore) -> list[GenerationChunk]:
        """While the batch stays the same and samples simply, the steps run in C (bursts.py)."""
        if not core.scheduler.waiting:  # nothing to admit: idle slots' cells would only slow the decode
            core.runner.cache.release_free(len(core.scheduler.running))
        bursts = self._decode_bursts(core)
        steps = bursts.steps_possible() if bursts is not None else 0
        if steps < 2:  # one step is as cheap in Python
            return core.step()
        bursts.run(steps, self._deliver, self._interrupted)
        return []

    def _decode_bursts(self, core: EngineCore) -> DecodeBursts | None:
        if self._bursts is None:
            lib = library() if self.config.decode_loop else None
            native = core.runner.native
            loop = DecodeLoop(lib, native.context, self.config.max_num_seqs, core.sampler.vocab_size) if lib else None
            self._bursts = (DecodeBursts(core, loop, native.n_vocab, self.config.stream_interval_ms / 1000)
                            if loop is not None else False)
            core.runner.on_close(self._bursts.close if self._bursts else None)
        return self._bursts or None

    @property
    def decode_bursts(self) -> DecodeBursts | None:
        """The C loop's driver, once the engine has stepped (None: steps run in Python)."""
        return self._bursts or None


def load_tokenizer(gguf: Path, folder: str | None):
    """The tokenizer as transformers builds it (from a folder, or from the GGUF's metadata), so
    chat templates, special tokens and detokenizing behave as for the Hugging Face model."""
    import os

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if folder:
        tokenizer = AutoTokenizer.from_pretrained(Path(folder).expanduser())
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ensure_chat_template(tokenizer)
    return tokenizer
