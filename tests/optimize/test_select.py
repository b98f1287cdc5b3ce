"""Selection: each (hardware, model) pair gets the plan a careful engineer would pick, and it fits."""

from __future__ import annotations

import pytest

from shipyard.optimize.profile import GPU, GiB, HardwareProfile, ModelProfile
from shipyard.optimize.select import PlanError, plan

CPU_BOX = HardwareProfile(cpu_cores=2, memory_bytes=24 * GiB, cpu_flags=frozenset({"avx2", "avx512f", "avx512_vnni"}),
                          llamacpp_installed=True)
AVX2_BOX = HardwareProfile(cpu_cores=2, memory_bytes=24 * GiB, cpu_flags=frozenset({"avx2"}), llamacpp_installed=True)
GPU_24 = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA L4", 24 * GiB, (8, 9)),),
                         vllm_installed=True)
GPU_80 = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA H100", 80 * GiB, (9, 0)),),
                         vllm_installed=True)
L40S_48 = HardwareProfile(cpu_cores=16, memory_bytes=128 * GiB, gpus=(GPU("NVIDIA L40S", 48 * GiB, (8, 9)),),
                          vllm_installed=True)
A100_40_NO_VLLM = HardwareProfile(cpu_cores=8, memory_bytes=64 * GiB, gpus=(GPU("NVIDIA A100", 40 * GiB, (8, 0)),))


def _llama(params: float, layers: int, hidden: int, kv_heads: int, context: int = 32768) -> ModelProfile:
    return ModelProfile("m", "LlamaForCausalLM", int(params), layers, hidden, kv_heads, 128, context, "bfloat16",
                        int(params * 2))


QWEN_05B = _llama(0.49e9, 24, 896, 2)
LLAMA_7B = _llama(7e9, 32, 4096, 8)
LLAMA_70B = _llama(70e9, 80, 8192, 8)


@pytest.mark.parametrize("hardware, model, engine, precision", [
    (CPU_BOX, QWEN_05B, "transformers", "int8"),  # small: the embedded engine, int8 (VNNI) pays at 0.5B
    (AVX2_BOX, QWEN_05B, "transformers", "fp32"),  # no VNNI/AMX: int8 matmuls lose to fp32
    (CPU_BOX, LLAMA_7B, "llamacpp", "gguf-q4_k_m"),  # 7B on 2 cores: llama.cpp at 4 bits
    (GPU_24, QWEN_05B, "vllm", "bf16"),
    (GPU_24, LLAMA_7B, "vllm", "bf16"),  # 13 GiB of weights leave ~6 GiB of KV cache
    (GPU_80, QWEN_05B, "vllm", "bf16"),
    (GPU_80, LLAMA_7B, "vllm", "bf16"),
    (GPU_80, LLAMA_70B, "vllm", "fp8"),  # bf16 is 130 GiB; fp8 (65 GiB) leaves ~17k tokens of KV cache
    (L40S_48, LLAMA_70B, "vllm", "bnb-4bit"),  # fp8 (65 GiB) does not fit 48 GiB: vLLM's in-flight 4-bit does
    (A100_40_NO_VLLM, LLAMA_7B, "transformers", "bf16"),  # no vLLM: the embedded engine on the GPU
])
def test_the_plan_a_careful_engineer_would_pick_and_it_fits(hardware, model, engine, precision):
    chosen = plan(hardware, model)
    assert (chosen.engine, chosen.precision) == (engine, precision), chosen.reasons
    assert chosen.weight_bytes + chosen.kv_cache_bytes <= chosen.budget_bytes
    assert chosen.kv_cache_tokens >= min(model.context_length, 8192)
    assert chosen.max_num_seqs >= 1 and chosen.reasons


def test_gpu_plans_have_the_hand_computed_numbers():
    """Not just the label: weights, budget, KV tokens and batch, computed here from the model's shape."""
    big = plan(GPU_80, LLAMA_70B)  # 80 GiB × 0.9 − 1.5 GiB; 70e9 fp8 bytes; K+V × 80 layers × 8 heads × 128 × 2 B
    budget = int(80 * GiB * 0.9 - 1.5 * GiB)
    assert (big.budget_bytes, big.weight_bytes) == (budget, 70_000_000_000)
    assert big.kv_cache_tokens == (budget - 70_000_000_000) // (2 * 80 * 8 * 128 * 2) == 17_391
    assert big.max_num_seqs == 17_391 // 2048 and big.device == "cuda"
    small = plan(GPU_24, LLAMA_7B)  # bf16: 2 bytes a parameter; K+V × 32 layers × 8 heads × 128 × 2 B
    budget = int(24 * GiB * 0.9 - 1.5 * GiB)
    assert (small.budget_bytes, small.weight_bytes) == (budget, 14_000_000_000)
    assert small.kv_cache_tokens == (budget - 14_000_000_000) // (2 * 32 * 8 * 128 * 2)
    assert small.max_num_seqs == min(256, small.kv_cache_tokens // 2048)
    four = plan(L40S_48, LLAMA_70B)  # 0.56 bytes a parameter with the scales
    assert four.weight_bytes == int(70e9 * 0.56) and four.fallbacks == []
    assert "not fp8" in " ".join(four.reasons) and "not bf16" in " ".join(four.reasons)


def test_a_tiny_model_stays_fp32_on_a_cpu():
    demo = ModelProfile("demo", "LlamaForCausalLM", 4_000_000, 4, 256, 4, 32, 1024, "float32", 16_000_000)
    chosen = plan(CPU_BOX, demo)
    assert (chosen.engine, chosen.precision) == ("transformers", "fp32")
    assert "int8 would not pay" in " ".join(chosen.reasons)
    assert chosen.fallbacks == ["gguf-q8_0", "gguf-q4_k_m"]  # what verification would fall back to


@pytest.mark.parametrize("hardware, model, needle", [
    (CPU_BOX, LLAMA_70B, "70.0B parameters do not fit"),
    (GPU_24, LLAMA_70B, "do not fit"),
])
def test_an_impossible_case_is_refused_with_the_numbers(hardware, model, needle):
    with pytest.raises(PlanError) as refused:
        plan(hardware, model)
    message = str(refused.value)
    assert needle in message and "GiB" in message and "budget" in message


def test_an_fp8_checkpoint_keeps_its_quantization_and_gpu_only_paths_need_a_gpu():
    fp8 = ModelProfile("m", "LlamaForCausalLM", int(8e9), 32, 4096, 8, 128, 8192, "float8", int(8e9), "fp8")
    assert plan(GPU_80, fp8).precision == "fp8"
    for option in ("fp8", "bnb-4bit"):
        with pytest.raises(PlanError, match="needs a CUDA GPU"):
            plan(CPU_BOX, QWEN_05B, option)
    for option in ("gptq", "awq"):  # on a CPU: calibrated here, served by llama.cpp's 4-bit kernels
        assert (plan(CPU_BOX, QWEN_05B, option).engine, plan(CPU_BOX, QWEN_05B, option).precision) == ("llamacpp", option)


def test_overrides_are_honoured():
    assert plan(CPU_BOX, QWEN_05B, "none").precision == "fp32"
    assert plan(CPU_BOX, QWEN_05B, "gguf-q8_0").engine == "llamacpp"
    assert plan(A100_40_NO_VLLM, LLAMA_7B, "int8").precision == "int8"  # torchao on the embedded engine
    import dataclasses

    gpu_with_llamacpp = dataclasses.replace(GPU_80, llamacpp_installed=True)
    assert plan(gpu_with_llamacpp, LLAMA_7B, "gguf-q4_k_m").engine == "llamacpp"  # GGUF is llama.cpp's, GPU or not


def test_a_gguf_file_is_served_by_llama_cpp_on_any_machine():
    gguf = ModelProfile("m.gguf", "llama", int(7e9), 32, 4096, 8, 128, 8192, "gguf", int(4.1e9), "q4_k_m", "gguf")
    for hardware in (CPU_BOX, GPU_80):
        chosen = plan(hardware, gguf)
        assert (chosen.engine, chosen.precision) == ("llamacpp", "gguf-q4_k_m")
        assert chosen.weight_bytes == int(4.1e9)  # the file's own size
    odd = ModelProfile("m.gguf", "llama", int(7e9), 32, 4096, 8, 128, 8192, "gguf", int(5e9), "q5_k_s", "gguf")
    assert plan(CPU_BOX, odd).precision == "gguf-q5_k_s"


def test_gpu_plans_never_claim_a_quantization_they_cannot_serve():
    """The three faults of the old GPU plan: 4-bit AWQ offered for unquantized weights (vLLM refuses
    `--quantization awq` on fp16 weights), a quantization silently dropped without vLLM, and a
    compressed-tensors checkpoint served as GPTQ. Asked for GPTQ/AWQ, unquantized weights are now
    calibrated and exported as compressed-tensors for vLLM (tests/optimize/test_vllm_commands.py)."""
    with pytest.raises(PlanError, match="quantized beforehand"):
        plan(GPU_80, LLAMA_7B, "int8")
    for option in ("awq", "gptq"):
        assert any("compressed-tensors W4A16" in r for r in plan(GPU_80, LLAMA_7B, option).reasons)
    gptq = ModelProfile("m", "LlamaForCausalLM", int(7e9), 32, 4096, 8, 128, 8192, "int32", int(4e9), "gptq")
    assert (plan(GPU_80, gptq).engine, plan(GPU_80, gptq).precision) == ("vllm", "gptq")
    with pytest.raises(PlanError, match="install vLLM"):
        plan(A100_40_NO_VLLM, gptq)
    compressed = ModelProfile("m", "LlamaForCausalLM", int(7e9), 32, 4096, 8, 128, 8192, "int32", int(4e9),
                              "compressed-tensors")
    assert plan(GPU_80, compressed).precision == "compressed-tensors"
    for hardware in (GPU_24, GPU_80, L40S_48, A100_40_NO_VLLM):
        for model in (QWEN_05B, LLAMA_7B):
            chosen = plan(hardware, model)
            assert chosen.precision not in ("awq", "gptq")  # never a pre-quantized format for plain weights
            if chosen.engine == "transformers":
                assert chosen.precision in ("bf16", "fp16", "fp8", "int8")  # what the embedded engine applies
