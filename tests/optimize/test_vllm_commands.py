"""The `vllm serve` commands a GPU plan writes, checked against vLLM's own argument parser where
vLLM can be imported, else against its documented flags: `--quantization` takes one of
`QuantizationMethods` (vllm/model_executor/layers/quantization/__init__.py), `--max-model-len`
and `--max-num-seqs` take integers (vllm/engine/arg_utils.py, EngineArgs.add_cli_args)."""

from __future__ import annotations

import importlib.util

import pytest

from shipyard.optimize.deploy import deployment_for
from shipyard.optimize.profile import GPU, GiB, HardwareProfile, ModelProfile
from shipyard.optimize.select import PlanError, plan

# vLLM's documented `--quantization` choices that a plan may write (a subset of QuantizationMethods)
VLLM_QUANTIZATION_METHODS = {"awq", "gptq", "fp8", "compressed-tensors", "bitsandbytes", "gguf", "awq_marlin",
                             "gptq_marlin", "marlin", "modelopt", "torchao", "quark", "experts_int8"}
VLLM_INT_FLAGS = {"--max-model-len", "--max-num-seqs", "--tensor-parallel-size"}

H100 = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA H100", 80 * GiB, (9, 0)),),
                       vllm_installed=True)
L40S = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA L40S", 48 * GiB, (8, 9)),),
                       vllm_installed=True)


def _model(params: float, quantization: str | None = None) -> ModelProfile:
    return ModelProfile("m", "LlamaForCausalLM", int(params), 80 if params > 3e10 else 32, 8192, 8, 128, 32768,
                        "bfloat16", int(params * 2), quantization)


def _parse(args: list[str]) -> dict:
    if importlib.util.find_spec("vllm") is not None:  # the real parser, where vLLM is installed
        from vllm.engine.arg_utils import EngineArgs
        from vllm.utils import FlexibleArgumentParser

        parsed = EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(["--model", "m", *args])
        return {"quantization": parsed.quantization, "max_model_len": parsed.max_model_len,
                "max_num_seqs": parsed.max_num_seqs}
    values = dict(zip(args[::2], args[1::2]))
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2])
    for flag in values:
        assert flag in VLLM_INT_FLAGS | {"--quantization"}, flag
    for flag in VLLM_INT_FLAGS & set(values):
        int(values[flag])
    quantization = values.get("--quantization")
    assert quantization is None or quantization in VLLM_QUANTIZATION_METHODS
    return {"quantization": quantization, "max_model_len": int(values["--max-model-len"]),
            "max_num_seqs": int(values["--max-num-seqs"])}


@pytest.mark.parametrize("hardware, model, optimize, quantization", [
    (H100, _model(7e9), "auto", None),
    (H100, _model(70e9), "auto", "fp8"),
    (L40S, _model(70e9), "auto", "bitsandbytes"),
    (H100, _model(7e9, "gptq"), "auto", "gptq"),
    (H100, _model(7e9, "awq"), "auto", "awq"),
    (H100, _model(7e9, "compressed-tensors"), "auto", "compressed-tensors"),
    (H100, _model(7e9), "fp8", "fp8"),
    (H100, _model(7e9), "bnb-4bit", "bitsandbytes"),
])
def test_the_written_command_parses_as_vllm_reads_it(hardware, model, optimize, quantization, tmp_path):
    chosen = plan(hardware, model, optimize)
    deployment = deployment_for(chosen, tmp_path)
    (replica,) = deployment["replicas"]
    assert replica["kind"] == "vllm"
    parsed = _parse(replica["args"])
    assert parsed["quantization"] == quantization
    assert parsed["max_model_len"] == chosen.max_model_len and parsed["max_num_seqs"] == chosen.max_num_seqs


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_our_own_gptq_awq_go_to_vllm_as_the_compressed_tensors_export(method, tmp_path):
    """An unquantized model with --optimize gptq|awq on a GPU: calibrated here, exported as
    compressed-tensors (optimize/export.py), and vLLM launched on the export."""
    chosen = plan(H100, _model(7e9), method)
    assert chosen.engine == "vllm" and chosen.precision == method
    assert any("compressed-tensors W4A16" in reason for reason in chosen.reasons)
    export = tmp_path / "m-gptq-compressed-tensors"
    (replica,) = deployment_for(chosen, tmp_path, export)["replicas"]
    assert replica["model"] == str(export)
    assert _parse(replica["args"])["quantization"] == "compressed-tensors"
    with pytest.raises(PlanError, match="fp8 or bnb-4bit"):
        plan(H100, _model(7e9), "int8")  # vLLM has no int8 it makes itself
