"""Our GPTQ/AWQ results written as compressed-tensors W4A16 checkpoints (optimize/export.py): what
vLLM serves on a GPU. The export holds exactly the calibrated weights (read back by the
compressed-tensors library itself), and a GPU plan for an unquantized model with `--optimize
gptq|awq` calibrates, exports and launches vLLM on the export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from shipyard.optimize.calibrated import quantize
from shipyard.optimize.export import ExportError, export_compressed_tensors, on_grid
from shipyard.optimize.prequantized import dequantize, describe, quantization_config


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_the_export_holds_exactly_the_calibrated_weights(tiny_model, tmp_path, method):
    calibrated = quantize(tiny_model, method, out_dir=tmp_path / method)
    exported = export_compressed_tensors(calibrated)
    spec = quantization_config(exported)
    assert spec["quant_method"] == "compressed-tensors" and spec["format"] == "pack-quantized"
    assert describe(spec) == "compressed-tensors pack-quantized (4-bit int group 32)"
    weights = spec["config_groups"]["group_0"]["weights"]
    assert weights["symmetric"] is False and weights["group_size"] == 32
    assert spec["ignore"] == ["lm_head"]  # the output head stays as it is, like the embeddings
    packed = load_file(exported / "model.safetensors")
    assert any(name.endswith(".weight_packed") for name in packed)
    assert packed["model.layers.0.self_attn.q_proj.weight_scale"].dtype == torch.float16
    # read back by the compressed-tensors library, as a GPU would serve it: in fp16 (the scales' dtype)
    back = load_file(dequantize(exported, tmp_path / f"{method}-back") / "model.safetensors")
    original = load_file(calibrated / "model.safetensors")
    linears = [name for name in original if name.endswith("_proj.weight")]
    assert linears and all(torch.equal(back[name], original[name].half().float()) for name in linears)
    assert export_compressed_tensors(calibrated) == exported  # cached
    assert json.loads((exported / "shipyard-export.json").read_text())["quantization"]["method"] == method


def test_negative_scales_and_the_extreme_step_are_kept(tmp_path):
    scale = torch.tensor([[0.5], [-0.25], [0.0]]).to(torch.float16).float()
    steps = torch.randint(-8, 8, (3, 32)).float()
    steps[:, 0] = -8  # the block's extreme: ggml's scale is it / -8, so it keeps that weight's sign
    weight = steps * scale
    state = on_grid("w", weight)
    assert state["weight_scale"].tolist() == [[0.5], [0.25], [1.0]]
    assert state["weight_zero_point"].tolist() == [[0], [-1], [0]]
    with pytest.raises(ExportError, match="not on the Q4_0 grid"):
        on_grid("w", weight + 0.01)
    with pytest.raises(ExportError, match="no shipyard-quantization.json"):
        export_compressed_tensors(tmp_path)  # a folder Shipyard's GPTQ/AWQ did not write


def test_a_gpu_plan_calibrates_exports_verifies_and_launches_vllm_on_the_export(tiny_model):
    from shipyard.optimize.deploy import apply, deployment_for, verify
    from shipyard.optimize.profile import GPU, GiB, HardwareProfile, ModelProfile
    from shipyard.optimize.select import plan

    h100 = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA H100", 80 * GiB, (9, 0)),),
                           vllm_installed=True)
    chosen = plan(h100, ModelProfile.read(tiny_model), "gptq")
    export = apply(tiny_model, chosen)
    assert quantization_config(export)["format"] == "pack-quantized"
    check = verify(tiny_model, chosen, export, 2.0)
    assert check["precision"] == "gptq" and check["kept"] and abs(check["loss_pct"]) < 2.0
    (replica,) = deployment_for(chosen, tiny_model, export)["replicas"]
    assert replica["model"] == str(export) and replica["args"][-2:] == ["--quantization", "compressed-tensors"]
