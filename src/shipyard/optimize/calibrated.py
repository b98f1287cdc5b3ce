"""4-bit weight quantization with a calibration set: GPTQ and AWQ, on this machine's CPU.

Both write weights on llama.cpp's Q4_0 grid (blocks of 32 input channels, one fp16 scale `d`
per block, values `d·k` for k in -8..7, `d` set by the block's largest-magnitude weight as
ggml's `quantize_row_q4_0` sets it), so the result is served by llama.cpp's 4-bit CPU kernels as
a Q4_0 GGUF with what calibration chose kept, rather than by a dequantizing fallback.

- GPTQ (Frantar et al. 2022, the reference `gptq.py`'s column loop): per linear layer, the
  Hessian of its inputs over the calibration tokens; columns quantized in order, each one's error
  spread over the columns not yet quantized through the inverse Hessian's Cholesky factor.
- AWQ (Lin et al. 2023): per group of layers reading the same input (attention's q/k/v after the
  input norm, the MLP's gate/up after the post-attention norm, down after up), a per-channel
  scale `mean|x|^α`, α searched on the calibration activations for the smallest output error,
  folded into the preceding norm (or up's rows), then round-to-nearest.

Why not a library: llm-compressor pins transformers ≤ 5.17 and gptqmodel is a CUDA-oriented
source build; neither installs beside the pinned torch 2.13 / transformers 5.23 (docs/dependencies.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

GROUP = 32  # Q4_0's block
CALIBRATION_WINDOWS = 32
CALIBRATION_TOKENS = 256
METHODS = ("gptq", "awq")
FORMAT = 2  # what quantize() writes: a change makes new folders rather than reading old ones


class CalibrationError(RuntimeError):
    pass


def q4_scale(block):
    """ggml's Q4_0 scale for each row of `block` [rows, 32]: the largest-magnitude value / -8, in fp16."""
    import torch

    index = block.abs().argmax(dim=1, keepdim=True)
    extreme = block.gather(1, index).squeeze(1)
    return (extreme / -8).to(torch.float16).to(torch.float32)


def q4_round(w, d):
    """Values of `w` [rows] on the grid d·k, k in -8..7 (as ggml rounds: floor(x/d + 0.5))."""
    import torch

    safe = torch.where(d == 0, torch.ones_like(d), d)
    k = torch.clamp(torch.floor(w / safe + 0.5), -8, 7)
    return torch.where(d == 0, torch.zeros_like(w), k * safe)


def rtn_q4(weight):
    """Round-to-nearest on the Q4_0 grid, block by block (what llama.cpp's own quantizer does)."""
    out = weight.clone()
    for start in range(0, weight.shape[1], GROUP):
        block = weight[:, start: start + GROUP]
        d = q4_scale(block)
        out[:, start: start + GROUP] = q4_round(block, d.unsqueeze(1))
    return out


def gptq_q4(weight, hessian, damp: float = 0.01, block_size: int = 128):
    """GPTQ on the Q4_0 grid: `weight` [out, in] float32, `hessian` [in, in] of its inputs."""
    import torch

    W = weight.clone().float()
    H = hessian.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.zeros_like(W)
    columns = W.shape[1]
    d = None
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % GROUP == 0:  # the block's scale, from its weights as updated so far
                d = q4_scale(W1[:, i: i + GROUP])
            w = W1[:, i]
            q = q4_round(w, d)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


def calibration_batches(tokenizer, text: str, windows: int = CALIBRATION_WINDOWS, length: int = CALIBRATION_TOKENS):
    """Token windows of the calibration text, evenly spread over it."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if len(ids) < length:
        raise CalibrationError(f"the calibration text has {len(ids)} tokens; at least {length} are needed")
    starts = torch.linspace(0, len(ids) - length, steps=min(windows, max(1, len(ids) // length))).long()
    return [ids[s: s + length].unsqueeze(0) for s in starts.tolist()]


def default_calibration_text(chars: int = 60_000) -> str:
    """Python's own documentation (the demo model's training text; for other models, generic English
    and code prose): never the held-out text verification measures on."""
    from shipyard.demo.corpus import TRAINING_MODULES, docstrings

    parts: list[str] = []
    for name in TRAINING_MODULES:
        parts.extend(docstrings(name))
        if sum(map(len, parts)) >= chars:
            break
    return "\n\n".join(parts)[:chars]


def _linears(model):
    """The decoder blocks' linear layers (never the embeddings or the output head)."""
    import torch

    head = model.get_output_embeddings()
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


def _collect(model, batches, layers: dict, keep_rows: int = 0):
    """Run the calibration batches, accumulating each layer's input Hessian (and, with keep_rows,
    a sample of its input rows)."""
    import torch

    hessians = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in layers.items()}
    samples: dict[str, list] = {name: [] for name in layers}
    counts = dict.fromkeys(layers, 0)
    hooks = []

    def hook_for(name):
        def hook(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            hessians[name] += 2 * x.T @ x
            counts[name] += x.shape[0]
            if keep_rows and sum(len(s) for s in samples[name]) < keep_rows:
                samples[name].append(x[: keep_rows].float())
        return hook

    for name, module in layers.items():
        hooks.append(module.register_forward_pre_hook(hook_for(name)))
    try:
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch)
    finally:
        for hook in hooks:
            hook.remove()
    for name in hessians:
        hessians[name] /= max(counts[name], 1)
    return hessians, {name: torch.cat(rows)[:keep_rows] if rows else None for name, rows in samples.items()}


def _blocks(layers: dict) -> list[dict]:
    """The linears grouped by decoder block (`...layers.3.`), so calibration holds one block's
    statistics at a time: a 7B model's Hessians all at once would be ~28 GB in float64."""
    blocks: dict[str, dict] = {}
    for name, module in layers.items():
        match = re.match(r"(.*?\.(?:layers|h|blocks)\.\d+)\.", name)
        blocks.setdefault(match.group(1) if match else "", {})[name] = module
    return list(blocks.values())


def _awq_groups(model, layer):
    """(preceding module, [linears reading its output]) of one llama-style decoder block."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")) or not hasattr(mlp, "gate_proj"):
        raise CalibrationError("AWQ here knows llama-style blocks (q/k/v_proj, gate/up/down_proj); this "
                               f"model is {type(model).__name__}")
    return [(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
            (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
            (mlp.up_proj, [mlp.down_proj])]


def gptq_model(model, batches) -> None:
    """GPTQ on every linear, a block's Hessians at a time (all from the unquantized model: the
    quantized weights are written in at the end)."""
    import torch

    quantized = {}
    for block in _blocks(_linears(model)):
        hessians, _ = _collect(model, batches, block)
        for name, module in block.items():
            # rtn_q4 leaves GPTQ's values as they are, except the few blocks whose largest weight
            # moved during the error updates: those it puts on the grid llama.cpp will use, so the
            # folder and the Q4_0 GGUF made from it hold the same weights
            quantized[name] = rtn_q4(gptq_q4(module.weight.detach().float(), hessians[name]))
        del hessians
    with torch.inference_mode():
        for name, module in _linears(model).items():
            module.weight.copy_(quantized[name])


def awq_q4(model, batches, grid: int = 11, keep_rows: int = 2048) -> dict:
    """Search and fold AWQ scales into the model, a decoder block at a time (folding is exact, so
    later blocks see the same inputs), then round every linear to the Q4_0 grid. Returns the
    chosen α per group."""
    import torch

    names = {module: name for name, module in model.named_modules()}
    chosen = {}
    for layer in getattr(getattr(model, "model", None), "layers", []):
        groups = _awq_groups(model, layer)
        readers = {names[linears[0]]: linears[0] for _, linears in groups}  # each group's input, once
        _, samples = _collect(model, batches, readers, keep_rows=keep_rows)
        with torch.inference_mode():
            for previous, linears in groups:
                x = samples[names[linears[0]]]
                if x is None:
                    continue
                magnitude = x.abs().mean(dim=0).clamp(min=1e-6)
                reference = [x @ m.weight.T for m in linears]
                best = (float("inf"), 0.0, torch.ones_like(magnitude))
                for step in range(grid):
                    alpha = step / (grid - 1)
                    s = magnitude.pow(alpha)
                    s = s / (s.max() * s.min()).sqrt()
                    error = sum(float(((x @ (rtn_q4(m.weight * s) / s).T) - ref).pow(2).mean())
                                for m, ref in zip(linears, reference))
                    if error < best[0]:
                        best = (error, alpha, s)
                _, alpha, s = best
                chosen[names[linears[0]]] = alpha
                for m in linears:  # y = W x = (W·s)(x/s): the inputs' scale moves into what makes them
                    m.weight.mul_(s)
                if isinstance(previous, torch.nn.Linear):
                    previous.weight.div_(s.unsqueeze(1))
                else:
                    previous.weight.div_(s)
    with torch.inference_mode():
        for module in _linears(model).values():
            module.weight.copy_(rtn_q4(module.weight))
    return chosen


def quantize(model_dir: Path, method: str, out_dir: Path | None = None, text: str | None = None) -> Path:
    """`model_dir` quantized by `method` (gptq | awq) onto the Q4_0 grid, saved as a Hugging Face
    folder (float32 weights that are exactly the 4-bit values) beside a `shipyard-quantization.json`;
    cached by the model's content hash and the method."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shipyard.optimize.gguf import model_fingerprint
    from shipyard.engines.build_cache import cache_root

    if method not in METHODS:
        raise CalibrationError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    model_dir = Path(model_dir)
    text = text if text is not None else default_calibration_text()
    key = hashlib.sha256(f"{model_fingerprint(model_dir)}:{method}:{GROUP}:{FORMAT}:{text}".encode()).hexdigest()[:16]
    out_dir = out_dir or cache_root() / "quantized" / f"{model_dir.name}-{method}-{key}"
    if (out_dir / "shipyard-quantization.json").is_file():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batches = calibration_batches(tokenizer, text)
    report: dict = {"method": method, "group_size": GROUP, "grid": "ggml Q4_0", "calibration_windows": len(batches),
                    "calibration_tokens": sum(b.shape[1] for b in batches)}
    if method == "gptq":
        gptq_model(model, batches)
    else:
        report["alphas"] = awq_q4(model, batches)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (model_dir / extra).is_file() and not (partial / extra).is_file():
            shutil.copy(model_dir / extra, partial / extra)
    (partial / "shipyard-quantization.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
    return out_dir
