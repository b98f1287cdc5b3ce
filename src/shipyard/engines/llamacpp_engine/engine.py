"""The embedded engine with llama.cpp doing the forward pass: any GGUF file, in process.

Everything but the forward is the embedded engine's own (`TransformersEngine`): the scheduler's
continuous batching, the sampler (seeds, penalties, logprobs), exact stop strings, incremental
detokenizing, cancellation and the API's limits. So a GGUF deployment answers exactly like a
Hugging Face one, and several sequences decode in one `llama_decode` call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from shipyard.engines.llamacpp_engine.native import NativeLlama
from shipyard.engines.llamacpp_engine.runner import LlamaCppRunner
from shipyard.engines.settings import LlamaCppEngineConfig
from shipyard.engines.transformers_engine.engine import TransformersEngine
from shipyard.engines.transformers_engine.loader import LoadedModel, ensure_chat_template, eos_token_ids


class LlamaCppEngine(TransformersEngine):
    config: LlamaCppEngineConfig

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
        return loaded, LlamaCppRunner(native)

    def _prefix_cache(self, runner) -> None:
        return None  # llama.cpp's KV cells are its own; prompts are computed whole


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
