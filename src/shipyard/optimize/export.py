"""Our GPTQ/AWQ results as a compressed-tensors checkpoint: what vLLM serves on a GPU.

optimize/calibrated.py writes weights on llama.cpp's Q4_0 grid: blocks of 32 input channels,
values d·k for k in -8..7, d the block's largest-magnitude weight / -8 in fp16 (so d takes that
weight's sign). Here the same values are written in compressed-tensors' W4A16 `pack-quantized`
format by the library's own packer (what llm-compressor writes and vLLM's WNA16 kernels read):
4-bit ints in groups of 32, an fp16 scale and a zero point per group. A block with d > 0 is
scale d, zero 0, q = k; one with d < 0 is scale -d, zero -1, q = -k - 1. Every value, +8·|d|
included, is kept exactly (d is an fp16 number already): each layer is unpacked again, in fp32,
and compared before it is written. vLLM computes in fp16/bf16, where d·k rounds as any fp16
weight does.
The checkpoint is cached beside the quantized folder; `vllm serve` reads it with
`--quantization compressed-tensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

from shipyard.optimize.calibrated import GROUP, q4_scale
from shipyard.optimize.model_folder import complete, staging

FORMAT_NOTE = "shipyard-export.json"


class ExportError(ValueError):
    pass


def _scheme():
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=False, strategy="group", group_size=GROUP))


def on_grid(name: str, weight):
    """A Q4_0-grid weight [out, in] as compressed-tensors' state: weight, fp16 scale, zero point."""
    import torch

    out, inp = weight.shape
    if inp % GROUP:
        raise ExportError(f"{name}: {inp} input channels are not whole groups of {GROUP}")
    blocks = weight.reshape(out, inp // GROUP, GROUP)
    d = q4_scale(blocks.reshape(-1, GROUP)).reshape(out, inp // GROUP, 1)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    k = torch.round(blocks / safe)
    if not (torch.equal(k * d, blocks) and k.min() >= -8 and k.max() <= 7):
        raise ExportError(f"{name} is not on the Q4_0 grid (quantized by optimize/calibrated.py?)")
    scale = torch.where(d == 0, torch.ones_like(d), d.abs()).squeeze(-1)
    zero = torch.where(d < 0, -1, 0).squeeze(-1).to(torch.int8)
    return {"weight": weight, "weight_scale": scale.to(torch.float16), "weight_zero_point": zero}


def export_compressed_tensors(quantized_dir: Path, out_dir: Path | None = None) -> Path:
    """`quantized_dir` (calibrated.quantize's folder) as a W4A16 compressed-tensors checkpoint."""
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    quantized_dir = Path(quantized_dir)
    report_file = quantized_dir / "shipyard-quantization.json"
    if not report_file.is_file():
        raise ExportError(f"{quantized_dir} was not quantized by Shipyard's GPTQ/AWQ (no {report_file.name})")
    out_dir = out_dir or quantized_dir.with_name(quantized_dir.name + "-compressed-tensors")
    if (out_dir / FORMAT_NOTE).is_file():
        return out_dir
    with torch.device("meta"):  # the module tree, without weights: which linears were quantized
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(quantized_dir))
    head = model.get_output_embeddings()
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    quantized = {name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and module is not head}
    scheme = _scheme()
    tensors: dict = {}
    for shard in sorted(quantized_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
    written: dict = {}
    for name, tensor in tensors.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in quantized:
            state = on_grid(name, tensor.float())
            packed = PackedQuantizationCompressor.compress(state, scheme)
            exact = dict(packed, weight_scale=packed["weight_scale"].float())  # unpacked in fp32, not fp16
            if not torch.equal(PackedQuantizationCompressor.decompress(exact, scheme)["weight"], state["weight"]):
                raise ExportError(f"{name}: the packed weights do not unpack to the same values")
            written.update({f"{module}.{key}": value.contiguous() for key, value in packed.items()})
        else:
            written[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
    if not any(key.endswith(".weight_packed") for key in written):
        raise ExportError(f"{quantized_dir} holds none of its model's linear layers")
    config = json.loads((quantized_dir / "config.json").read_text())
    spec = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                              ignore=sorted(linears - quantized), quantization_status="compressed")
    config["quantization_config"] = {**spec.model_dump(mode="json", exclude_none=True),
                                     "quant_method": "compressed-tensors"}
    config["torch_dtype"] = "float16"
    note = {"from": str(quantized_dir), "format": "compressed-tensors pack-quantized", "bits": 4,
            "group_size": GROUP, "quantization": json.loads(report_file.read_text())}
    return complete(staging(out_dir), quantized_dir, out_dir, config, (FORMAT_NOTE, note), written)
