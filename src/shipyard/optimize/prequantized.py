"""Pre-quantized GPTQ, AWQ and compressed-tensors checkpoints on a CPU: their packed weights unpacked.

On a GPU, vLLM serves such checkpoints as they are (`--quantization gptq|awq|compressed-tensors`).
On a CPU the loaders transformers would use (gptqmodel, autoawq) do not install beside the pinned
torch, so the checkpoint's int4 values are unpacked here with their group scales and zero points
into a plain folder of the weights they stand for (cached by content hash). That folder then goes
through the measured selection like any model: the embedded engine, or llama.cpp's 4-bit and
8-bit GGUF kernels.

compressed-tensors checkpoints (llm-compressor's output: `pack-quantized` W4A16/W8A16, int8 and
fp8 formats) are unpacked by the compressed-tensors library itself, shard by shard without
loading the model (its `convert_checkpoint` with the `CompressedTensorsDequantizer`), so every
format and scheme it writes is read back as it wrote it.

The layouts, from the formats' reference packers:
- GPTQ (AutoGPTQ / GPTQModel `QuantLinear.pack`): `qweight` int32 [in/8, out], eight 4-bit values
  per int along the input dimension; `qzeros` int32 [groups, out/8] packed along the output
  dimension, stored minus one in the original format (`checkpoint_format: gptq`) and as they are
  in `gptq_v2`; `scales` fp16 [groups, out]; `g_idx` [in] maps each input row to its group.
- AWQ (AutoAWQ GEMM): `qweight` int32 [in, out/8] and `qzeros` int32 [groups, out/8], packed along
  the output dimension in the order 0, 2, 4, 6, 1, 3, 5, 7; `scales` fp16 [groups, out].
Weights are `(q - zero) × scale`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shipyard.optimize.model_folder import complete, staging

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SUPPORTED = ("gptq", "awq", "compressed-tensors")


class PrequantizedError(ValueError):
    pass


def quantization_config(model_dir: Path) -> dict | None:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("quantization_config")


def describe(spec: dict) -> str:
    """The checkpoint's quantization in a few words (for the deploy's reasons)."""
    method = spec.get("quant_method")
    if method != "compressed-tensors":
        return f"4-bit {method.upper()} (group {spec.get('group_size')})"
    schemes = [group.get("weights") or {} for group in (spec.get("config_groups") or {}).values()]
    shapes = sorted({f"{w.get('num_bits')}-bit {w.get('type')} {w.get('strategy')}"
                     + (f" {w['group_size']}" if w.get("group_size") else "") for w in schemes})
    return f"compressed-tensors {spec.get('format')} ({', '.join(shapes) or 'no weight scheme'})"


def _dequantize_compressed(model_dir: Path, partial: Path) -> None:
    """compressed-tensors' own model-free dequantizer, shard by shard, into `partial` (float32)."""
    import torch
    from loguru import logger

    logger.disable("compressed_tensors")  # its per-file chatter; failures still raise
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    try:
        convert_checkpoint(model_dir, partial, CompressedTensorsDequantizer(model_dir, dtype=torch.float32),
                           max_workers=1, device="cpu")
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise PrequantizedError(f"{model_dir}: compressed-tensors could not unpack it: {exc}") from exc


def _unpack_rows(packed, bits: int = 4):
    """int32 [r, c] with 32/bits values per int along the rows → int32 [r × 32/bits, c]."""
    import torch

    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    values = (packed.unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0] * per, packed.shape[1])


def _unpack_cols(packed, bits: int = 4, order=None):
    """int32 [r, c] with 32/bits values per int along the columns → int32 [r, c × 32/bits]."""
    import torch

    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    values = (packed.unsqueeze(2) >> shifts.view(1, 1, per)) & ((1 << bits) - 1)  # [r, c, nibble]
    if order is not None:  # nibble i holds column order[i] of its group of eight
        restored = torch.empty_like(values)
        restored[:, :, list(order)] = values
        values = restored
    return values.reshape(packed.shape[0], packed.shape[1] * per)


def dequantize_gptq(qweight, qzeros, scales, g_idx=None, v1: bool = True):
    """The dense weight [out, in] a GPTQ layer stands for."""
    import torch

    q = _unpack_rows(qweight)  # [in, out]
    zeros = _unpack_cols(qzeros) + (1 if v1 else 0)  # [groups, out]
    if g_idx is None:
        group = q.shape[0] // scales.shape[0]
        g_idx = torch.arange(q.shape[0], dtype=torch.long) // group
    g_idx = g_idx.long()
    weight = (q - zeros[g_idx]).float() * scales[g_idx].float()
    return weight.T.contiguous()


def dequantize_awq(qweight, qzeros, scales):
    """The dense weight [out, in] an AWQ (GEMM) layer stands for."""
    import torch

    q = _unpack_cols(qweight, order=AWQ_ORDER)  # [in, out]
    zeros = _unpack_cols(qzeros, order=AWQ_ORDER)  # [groups, out]
    g_idx = torch.arange(q.shape[0], dtype=torch.long) // (q.shape[0] // scales.shape[0])
    weight = (q - zeros[g_idx]).float() * scales[g_idx].float()
    return weight.T.contiguous()


def dequantize(model_dir: Path, out_dir: Path | None = None) -> Path:
    """A plain folder of the weights a GPTQ/AWQ checkpoint stands for (cached by content hash)."""
    import torch
    from safetensors.torch import load_file

    from shipyard.optimize.gguf import model_fingerprint
    from shipyard.engines.build_cache import cache_root

    model_dir = Path(model_dir)
    spec = quantization_config(model_dir)
    method = (spec or {}).get("quant_method")
    if method not in SUPPORTED:
        raise PrequantizedError(f"{model_dir} is not a GPTQ, AWQ or compressed-tensors checkpoint "
                                f"(quant_method {method!r})")
    if method != "compressed-tensors" and int(spec.get("bits", 4)) != 4:
        raise PrequantizedError(f"only 4-bit {method.upper()} checkpoints are unpacked here, not {spec.get('bits')}-bit")
    if method == "awq" and str(spec.get("version", "gemm")).lower() != "gemm":
        raise PrequantizedError(f"AWQ {spec.get('version')} packing is not unpacked here (GEMM is)")
    out_dir = out_dir or cache_root() / "dequantized" / f"{model_dir.name}-{model_fingerprint(model_dir)}"
    if (out_dir / "config.json").is_file():
        return out_dir
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    note = ("shipyard-dequantized.json", {"from": str(model_dir), "quantization": describe(spec),
                                          "sha": hashlib.sha256(str(model_dir).encode()).hexdigest()[:12]})
    if method == "compressed-tensors":
        partial = staging(out_dir)
        _dequantize_compressed(model_dir, partial)
        return complete(partial, model_dir, out_dir, config, note)
    v1 = spec.get("checkpoint_format", "gptq") != "gptq_v2"
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    dense: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not name.endswith(".qweight"):
            continue
        prefix = name.removesuffix(".qweight")
        if method == "gptq":
            weight = dequantize_gptq(tensor, tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"],
                                     tensors.get(f"{prefix}.g_idx"), v1)
        else:
            weight = dequantize_awq(tensor, tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"])
        dense[f"{prefix}.weight"] = weight
    packed_parts = (".qweight", ".qzeros", ".scales", ".g_idx")
    for name, tensor in tensors.items():
        if not name.endswith(packed_parts):
            dense[name] = tensor.float() if tensor.is_floating_point() else tensor
    if not any(name.endswith(".qweight") for name in tensors):
        raise PrequantizedError(f"{model_dir} says {method} but holds no packed weights")
    return complete(staging(out_dir), model_dir, out_dir, config, note, dense)
