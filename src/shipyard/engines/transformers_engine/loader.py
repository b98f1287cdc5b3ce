"""Load a local Hugging Face causal-LM folder: weights, tokenizer, chat template, stop tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# ChatML: what Qwen2, many fine-tunes and the built-in demo model use. Applied only when the
# tokenizer brings no template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    max_model_len: int
    eos_token_ids: frozenset[int]
    vocab_size: int
    num_layers: int


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # fp32 on CPU keeps a seeded request's tokens independent of what shares its batch. bf16
        # (`dtype: bfloat16`) is ~1.5x faster on CPUs with AVX512-BF16/AMX, but its matmul
        # rounding depends on the batch shape, so seeds then reproduce only for the same batch.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def eos_token_ids(tokenizer, *sources) -> frozenset[int]:
    """Every id that ends a generation: the tokenizer's and each source's `eos_token_id` (an int
    or a list), and ChatML's `<|im_end|>` when the default template is the one in use."""
    eos: set[int] = set()
    for source in (*sources, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(int(v) for v in value)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None and tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE:
        eos.add(im_end)
    return frozenset(eos)


def load_model(path: str | Path, device: str = "auto", dtype: str = "auto", max_model_len: int | None = None,
               quantization: str = "none") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no tqdm bars in server logs

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the folder, never a hub
    torch_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    from shipyard.engines.transformers_engine.model_runner import ATTENTION_NAME

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, torch_device), attn_implementation=ATTENTION_NAME
    )
    model.to(torch_device).eval()
    if quantization != "none":
        from shipyard.engines.transformers_engine.quantize import quantize_model

        quantize_model(model, quantization, torch_device)
    config = model.config.get_text_config()

    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
    if max_model_len is not None:
        context = min(context, max_model_len) if context else max_model_len

    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=torch_device,
        max_model_len=int(context),
        eos_token_ids=eos_token_ids(tokenizer, getattr(model, "generation_config", None), config),
        # Embedding matrices are often padded past the tokenizer; never sample an id it cannot decode.
        vocab_size=min(len(tokenizer), int(model.get_output_embeddings().weight.shape[0])),
        num_layers=int(config.num_hidden_layers),
    )
