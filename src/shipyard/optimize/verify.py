"""Check what an optimization kept: perplexity on held-out text, and a short speed check.

Perplexity is computed the same way for every format — the text's tokens in fixed windows, the
mean negative log-likelihood of each next token, exponentiated — with the model's own
tokenizer: transformers for a Hugging Face folder (quantized in memory like the engine does),
llama.cpp for a GGUF file. `compare()` runs the reference and the candidate on the same text
and says whether the loss stays within the bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

WINDOW = 256


@dataclass
class Quality:
    perplexity: float
    tokens: int
    decode_tokens_per_s: float | None = None


@dataclass
class Verdict:
    reference: Quality
    candidate: Quality
    loss_pct: float  # perplexity increase, percent of the reference
    bound_pct: float

    @property
    def kept(self) -> bool:
        return self.loss_pct <= self.bound_pct


HELD_OUT_MODULES = ("xml.dom.minidom", "pdb", "bdb", "doctest", "pydoc", "locale", "fileinput", "linecache",
                    "graphlib", "runpy", "sysconfig", "tomllib", "netrc", "pstats", "codeop", "compileall")


def held_out_text(chars: int = 20_000) -> str:
    """Python documentation the demo model never saw: docstrings of standard modules outside its
    training corpus (shipyard.demo.corpus), in a fixed order."""
    from shipyard.demo.corpus import TRAINING_MODULES, docstrings

    trained = set(TRAINING_MODULES)
    text: list[str] = []
    for name in HELD_OUT_MODULES:
        if name in trained:
            continue
        text.extend(docstrings(name))
        if sum(map(len, text)) >= chars:
            break
    return "\n\n".join(text)[:chars]


def perplexity_hf(model_dir: str | Path, text: str, quantization: str = "none", device: str = "cpu",
                  window: int = WINDOW, max_memory_bytes: int | None = None) -> Quality:
    """Perplexity of the Hugging Face model on `text`. With `max_memory_bytes` (the unquantized
    reference, on a CPU), weights that do not fit that budget are read from disk layer by layer as
    the forward reaches them (accelerate's offload of memory-mapped safetensors), so checking a
    plan never needs more memory than the plan itself."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shipyard.engines.transformers_engine.quantize import quantize_model

    torch_device = torch.device(device)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    streamed = max_memory_bytes is not None and device == "cpu" and quantization == "none"
    offload = None
    if streamed:  # weights past the budget stay on disk (memory-mapped safetensors), a layer at a time
        import tempfile

        offload = tempfile.TemporaryDirectory(prefix="shipyard-offload-")  # only non-safetensors weights land here
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="sdpa", device_map="auto",
            max_memory={"cpu": int(max_memory_bytes)}, offload_folder=offload.name).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                     attn_implementation="sdpa").to(torch_device).eval()
        quantize_model(model, quantization, torch_device)  # as the engine does at load time
    ids = AutoTokenizer.from_pretrained(model_dir)(text, add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window + 1]], device=torch_device)
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).logits.float()
            losses = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            nll += float(losses)
            count += chunk.shape[1] - 1
    speed = None if streamed and getattr(model, "hf_device_map", None) and "disk" in model.hf_device_map.values() \
        else _decode_speed_hf(model, torch_device)
    if offload is not None:
        del model
        offload.cleanup()
    return Quality(math.exp(nll / count), count, speed)


def _decode_speed_hf(model, device, steps: int = 32) -> float:
    import torch

    with torch.inference_mode():
        ids = torch.tensor([[1] * 16], device=device)
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(steps):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        return steps / (time.perf_counter() - started)


def perplexity_gguf(path: str | Path, text: str, window: int = WINDOW, threads: int = 1) -> Quality:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=window + 8, logits_all=True, n_threads=threads, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        llm.reset()
        llm.eval(chunk[:-1])
        logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nll -= float(logprobs[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    speed = _decode_speed_gguf(llm)
    llm.close()
    return Quality(math.exp(nll / count), count, speed)


def _decode_speed_gguf(llm, steps: int = 32) -> float:
    llm.reset()
    llm.eval([1] * 16)
    started = time.perf_counter()
    for _ in range(steps):
        llm.eval([2])
    return steps / (time.perf_counter() - started)


def compare(reference: Quality, candidate: Quality, bound_pct: float) -> Verdict:
    loss = (candidate.perplexity - reference.perplexity) / reference.perplexity * 100
    return Verdict(reference, candidate, loss, bound_pct)
