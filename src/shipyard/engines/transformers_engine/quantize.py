"""Quantization applied to a loaded model, through torchao (PyTorch's maintained quantization
library; `torch.ao.quantization` is deprecated).

- `int8` on a CPU: dynamic quantization — int8 weights, and activations quantized per token on
  the fly, so the linear layers run int8 matmuls.
- `int8` on a GPU: int8 weight-only (the activations stay bf16; decode is memory-bound, and
  halving the weights' bytes is what pays).
- `fp8` (GPUs with fp8 tensor cores, Ada/Hopper): fp8 weights and dynamic fp8 activations.

Only `nn.Linear` layers inside the transformer blocks are quantized: the embedding and the output
head keep full precision (they are a small share of the work in a big model and a large share
of the quality in a small one).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("shipyard.optimize")

QUANTIZATIONS = ("none", "int8", "fp8")


class QuantizationError(RuntimeError):
    pass


def _is_block_linear(module: torch.nn.Module, name: str) -> bool:
    return isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in ("lm_head", "embed_out", "output")


def quantize_model(model: torch.nn.Module, method: str, device: torch.device) -> torch.nn.Module:
    """Quantize `model` in place; returns it. Raises QuantizationError with the reason when the
    method cannot run here."""
    if method == "none":
        return model
    if method not in QUANTIZATIONS:
        raise QuantizationError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {method!r}")
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise QuantizationError(f"torchao is not installed ({exc})") from exc
    if method == "fp8":
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
            raise QuantizationError("fp8 needs a GPU with fp8 tensor cores (compute capability 8.9+: Ada, Hopper); "
                                    "use int8 here.")
        config = Float8DynamicActivationFloat8WeightConfig()
    elif device.type == "cuda":
        config = Int8WeightOnlyConfig()
    else:
        config = Int8DynamicActivationInt8WeightConfig()
    quantize_(model, config, filter_fn=_is_block_linear)
    log.info("quantized %s linear layers to %s (%s)", sum(1 for n, m in model.named_modules()
                                                          if _is_block_linear(m, n)), method, type(config).__name__)
    return model
