"""Pre-quantized GPTQ, AWQ and compressed-tensors checkpoints on a CPU: packed as AutoGPTQ's and
AutoAWQ's reference packers write them (below, from their `pack` code) and as compressed-tensors'
own compressor does, unpacked by optimize/prequantized.py into exactly the weights they stand
for, and deployed by the measured selection."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from shipyard.optimize.prequantized import AWQ_ORDER, PrequantizedError, dequantize

GROUP = 32


def _quantize(weight: torch.Tensor, symmetric: bool):
    """[out, in] → (q [in, out] ints 0..15, zero [groups, out], scale fp16 [groups, out], dense [out, in])."""
    w = weight.T.float()
    groups = w.shape[0] // GROUP
    g = w.reshape(groups, GROUP, w.shape[1])
    if symmetric:
        scale = (g.abs().amax(1) / 7).clamp(min=1e-8).half()
        zero = torch.full_like(scale, 8, dtype=torch.float32)
    else:
        low, high = g.amin(1), g.amax(1)
        scale = ((high - low) / 15).clamp(min=1e-8).half()
        zero = torch.round(-low / scale.float()).clamp(0, 15)
    q = torch.clamp(torch.round(g / scale.float().unsqueeze(1) + zero.unsqueeze(1)), 0, 15).reshape_as(w).int()
    index = torch.arange(w.shape[0]) // GROUP
    dense = ((q - zero[index]) * scale.float()[index]).T.contiguous()
    return q, zero.int(), scale, dense


def _pack_rows(values: torch.Tensor) -> torch.Tensor:  # AutoGPTQ: eight rows into one int32 row
    packed = torch.zeros(values.shape[0] // 8, values.shape[1], dtype=torch.int32)
    for j in range(8):
        packed |= (values[j::8] & 0xF) << (4 * j)
    return packed


def _pack_cols(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int32)
    for i, column in enumerate(order):
        packed |= (values[:, column::8] & 0xF) << (4 * i)
    return packed


def _packed_checkpoint(tiny_model, tmp_path, method: str):
    """The tiny model as a 4-bit checkpoint of `method`, and the dense weights it stands for."""
    out = tmp_path / f"tiny-{method}"
    shutil.copytree(tiny_model, out)
    tensors = load_file(out / "model.safetensors")
    packed, expected = {}, {}
    for name, tensor in tensors.items():
        prefix = name.removesuffix(".weight")
        if name.endswith("_proj.weight") and tensor.dim() == 2 and tensor.shape[1] % GROUP == 0:
            q, zero, scale, dense = _quantize(tensor, symmetric=method == "gptq")
            expected[name] = dense
            if method == "gptq":  # v1: zeros stored minus one; g_idx maps rows to groups
                packed[f"{prefix}.qweight"] = _pack_rows(q)
                packed[f"{prefix}.qzeros"] = _pack_cols(zero - 1)
                packed[f"{prefix}.g_idx"] = (torch.arange(q.shape[0]) // GROUP).int()
            else:
                packed[f"{prefix}.qweight"] = _pack_cols(q, AWQ_ORDER)
                packed[f"{prefix}.qzeros"] = _pack_cols(zero, AWQ_ORDER)
            packed[f"{prefix}.scales"] = scale
        else:
            packed[name] = tensor
    save_file(packed, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": GROUP,
                                     **({"sym": True, "desc_act": False} if method == "gptq" else {"version": "gemm"})}
    (out / "config.json").write_text(json.dumps(config))
    return out, expected


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_packed_weights_unpack_to_exactly_what_they_stand_for(tiny_model, tmp_path, method):
    checkpoint, expected = _packed_checkpoint(tiny_model, tmp_path, method)
    unpacked = dequantize(checkpoint, tmp_path / f"{method}-dense")
    weights = load_file(unpacked / "model.safetensors")
    assert expected and all(torch.equal(weights[name], dense) for name, dense in expected.items())
    assert "quantization_config" not in json.loads((unpacked / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(unpacked)  # a plain model folder now


def test_what_is_not_a_4_bit_gptq_or_awq_checkpoint_is_refused(tiny_model, tmp_path):
    with pytest.raises(PrequantizedError, match="not a GPTQ, AWQ or compressed-tensors"):
        dequantize(tiny_model, tmp_path / "x")
    checkpoint, _ = _packed_checkpoint(tiny_model, tmp_path, "gptq")
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"]["bits"] = 3
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrequantizedError, match="only 4-bit"):
        dequantize(checkpoint, tmp_path / "y")


@pytest.mark.parametrize("method", ["gptq", "compressed-tensors"])
def test_a_prequantized_checkpoint_deploys_on_a_cpu(tiny_model, tmp_path, method):
    import os
    import subprocess
    import sys

    if method == "gptq":
        checkpoint, _ = _packed_checkpoint(tiny_model, tmp_path, "gptq")
        said = "unpacked the 4-bit GPTQ (group 32) checkpoint"
    else:
        checkpoint, _ = _compressed_checkpoint(tiny_model, tmp_path, symmetric=False)
        said = "unpacked the compressed-tensors pack-quantized (4-bit int group 32) checkpoint"
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "shipyard", "deploy", str(checkpoint), "--plan", "--remeasure"],
                            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert said in result.stdout and "chose " in result.stdout


def _compressed_checkpoint(tiny_model, tmp_path, symmetric: bool, bits: int = 4):
    """The tiny model as llm-compressor writes a W4A16 (or W8A16) checkpoint: compressed-tensors'
    own packer and config; and the weights it stands for (the library's fake quantization)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    out = tmp_path / f"tiny-ct-{bits}-{'sym' if symmetric else 'asym'}"
    shutil.copytree(tiny_model, out)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=GROUP)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    low_q, high_q = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    packed, expected = {}, {}
    for name, tensor in load_file(out / "model.safetensors").items():
        if not name.endswith("_proj.weight"):
            packed[name] = tensor
            continue
        weight = tensor.float()
        groups = weight.reshape(weight.shape[0], -1, GROUP)
        if symmetric:
            scale, zero = (groups.abs().amax(-1) / high_q).clamp(min=1e-8), None
        else:
            low, high = groups.amin(-1), groups.amax(-1)
            scale = ((high - low) / (high_q - low_q)).clamp(min=1e-8)
            zero = torch.round(low_q - low / scale).clamp(low_q, high_q).to(torch.int8)
        state = {"weight": weight, "weight_scale": scale, **({"weight_zero_point": zero} if zero is not None else {})}
        expected[name] = fake_quantize(weight, scale, zero, args)
        prefix = name.removesuffix(".weight")
        packed.update({f"{prefix}.{key}": value for key, value in PackedQuantizationCompressor.compress(state, scheme).items()})
    save_file(packed, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    spec = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", ignore=["lm_head"],
                              quantization_status="compressed")
    config["quantization_config"] = {**spec.model_dump(mode="json"), "quant_method": "compressed-tensors"}
    (out / "config.json").write_text(json.dumps(config))
    return out, expected


@pytest.mark.parametrize("symmetric, bits", [(True, 4), (False, 4), (True, 8)])
def test_compressed_tensors_checkpoints_unpack_to_what_they_stand_for(tiny_model, tmp_path, symmetric, bits):
    from transformers import AutoModelForCausalLM

    from shipyard.optimize.prequantized import describe, quantization_config

    checkpoint, expected = _compressed_checkpoint(tiny_model, tmp_path, symmetric, bits)
    assert load_file(checkpoint / "model.safetensors").keys().isdisjoint(expected)  # packed, not dense
    assert describe(quantization_config(checkpoint)) == f"compressed-tensors pack-quantized ({bits}-bit int group 32)"
    unpacked = dequantize(checkpoint, tmp_path / "ct-dense")
    weights = load_file(unpacked / "model.safetensors")
    assert expected and all(torch.equal(weights[name], dense) for name, dense in expected.items())
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    config = json.loads((unpacked / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "float32"
    AutoModelForCausalLM.from_pretrained(unpacked)  # a plain model folder now
    assert dequantize(checkpoint, tmp_path / "ct-dense") == unpacked  # cached


def test_a_broken_compressed_tensors_checkpoint_is_refused(tiny_model, tmp_path):
    checkpoint, _ = _compressed_checkpoint(tiny_model, tmp_path, symmetric=True)
    tensors = load_file(checkpoint / "model.safetensors")
    scale = next(name for name in tensors if name.endswith("weight_scale"))
    save_file({name: t for name, t in tensors.items() if name != scale}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(PrequantizedError, match="compressed-tensors could not unpack"):
        dequantize(checkpoint, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
