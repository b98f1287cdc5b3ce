"""Choose how to serve a model on a machine: engine, precision, KV-cache size, batching limits.

The rules a careful engineer applies, in order of preference, each checked against memory:
weights at the chosen precision plus a KV cache that holds at least one full-length sequence (and
room for batching) must fit in a budget — 90% of the largest GPU less a runtime reserve, or 60%
of RAM on a CPU (the rest is the OS, the gateway and the working set). The first candidate that
fits wins; every candidate tried says why it was or was not taken, so the plan explains itself.
A model that fits nowhere is refused with the numbers.

- GPU: a checkpoint's own quantization (GPTQ, AWQ, fp8) is kept; else bf16 (fp16 before
  Ampere); else fp8 where the GPU has fp8 tensor cores (Ada, Hopper); else int8 weights; else
  4-bit AWQ. vLLM serves it when installed, else the embedded engine.
- CPU: a small model (≤ 1.5B parameters) runs on the embedded engine — dynamic int8 once it is
  big enough for int8 matmuls to pay (≥ 300M parameters) on a CPU with int8 dot-product
  instructions (VNNI or AMX; without them int8 is slower than fp32), fp32 otherwise; a
  bigger one goes to llama.cpp as GGUF, q8_0 while it fits comfortably (≤ 4B), else q4_K_M.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shipyard.optimize.profile import GiB, HardwareProfile, ModelProfile

# Bytes per parameter at each precision (4-bit formats with their group scales; GGUF's k-quants
# at their average bits per weight).
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "gptq": 0.56, "awq": 0.56,
                   "compressed-tensors": 0.56, "bnb-4bit": 0.56, "gguf-f16": 2.0, "gguf-q8_0": 1.0625,
                   "gguf-q4_k_m": 0.61, "gguf-q4_0": 0.5625}
OPTIONS = ("auto", "none", "int8", "fp8", "gptq", "awq", "bnb-4bit", "gguf-q8_0", "gguf-q4_k_m")
GPU_ONLY = {"fp8", "bnb-4bit"}
PREQUANTIZED = ("gptq", "awq", "fp8", "compressed-tensors")  # checkpoints vLLM serves as they are
GPU_UTILIZATION = 0.90  # vLLM's default share of GPU memory
GPU_RESERVE = 1.5 * GiB  # CUDA context, activations, graphs
CPU_SHARE = 0.60
SMALL_ON_CPU = 1_500_000_000
INT8_PAYS_ON_CPU = 300_000_000
Q8_ON_CPU_UP_TO = 4_000_000_000


class PlanError(ValueError):
    """No way to serve this model here (the message has the numbers)."""


@dataclass
class Plan:
    engine: str  # transformers | llamacpp | vllm
    precision: str  # fp32, bf16, fp16, fp8, int8, gptq, awq, gguf-f16, gguf-q8_0, gguf-q4_k_m
    device: str  # cpu | cuda
    weight_bytes: int
    kv_cache_tokens: int
    kv_cache_bytes: int
    max_num_seqs: int
    max_model_len: int
    budget_bytes: int
    reasons: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)  # what verification falls back to, in order

    def as_dict(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        return [("engine", self.engine), ("precision", self.precision), ("device", self.device),
                ("weights", f"{self.weight_bytes / GiB:.2f} GiB"),
                ("KV cache", f"{self.kv_cache_tokens:,} tokens ({self.kv_cache_bytes / GiB:.2f} GiB)"),
                ("max_num_seqs", str(self.max_num_seqs)), ("max_model_len", f"{self.max_model_len:,}"),
                ("memory budget", f"{self.budget_bytes / GiB:.1f} GiB"),
                ("fallbacks", ", ".join(self.fallbacks) or "none")]


def plan(hardware: HardwareProfile, model: ModelProfile, optimize: str = "auto") -> Plan:
    if optimize not in OPTIONS:
        raise PlanError(f"--optimize must be one of {', '.join(OPTIONS)}, not {optimize!r}")
    gpu = max(hardware.gpus, key=lambda g: g.memory_bytes) if hardware.gpus else None
    if optimize in GPU_ONLY and gpu is None:
        raise PlanError(f"{optimize} needs a CUDA GPU and this machine has none ({hardware.describe()}); "
                        "use int8 or a GGUF quantization on a CPU.")
    if optimize in ("gguf-q8_0", "gguf-q4_k_m") + ("gptq", "awq") * (gpu is None) and not hardware.llamacpp_installed:
        raise PlanError(f"{optimize} is served by llama.cpp, and llama-cpp-python is not installed "
                        "(scripts/llama-cpp.sh installs it).")
    candidates = _candidates(hardware, model, optimize, gpu)
    budget = int(gpu.memory_bytes * GPU_UTILIZATION - GPU_RESERVE) if gpu else int(hardware.memory_bytes * CPU_SHARE)
    reasons: list[str] = [f"hardware: {hardware.describe()}",
                          f"model: {model.architecture}, {_count(model.parameters)} parameters, "
                          f"context {model.context_length:,}, KV {model.kv_bytes_per_token(_kv_dtype(gpu)):,} "
                          f"bytes/token" + (f", already {model.quantization}" if model.quantization else "")]
    chosen: Plan | None = None
    fallbacks: list[str] = []
    for engine, precision, why in candidates:
        weights = _weight_bytes(model, precision)
        kv_token = model.kv_bytes_per_token(_kv_dtype(gpu))
        min_tokens = min(model.context_length, 8192)
        free = budget - weights
        if free < min_tokens * kv_token:
            reasons.append(f"not {precision}: {weights / GiB:.2f} GiB of weights + {min_tokens * kv_token / GiB:.2f} "
                           f"GiB for one {min_tokens:,}-token sequence > {budget / GiB:.2f} GiB budget")
            continue
        if chosen is not None:
            fallbacks.append(precision)
            continue
        chosen = _sized(engine, precision, "cuda" if gpu else "cpu", model, weights, free, kv_token, budget, gpu,
                        hardware)
        reasons.append(f"{precision} on {engine}: {why}")
    if chosen is None:
        smallest = min(_weight_bytes(model, p) for _, p, _ in candidates)
        raise PlanError(f"{model.parameters / 1e9:.1f}B parameters do not fit: even the smallest choice needs "
                        f"{smallest / GiB:.1f} GiB of weights plus "
                        f"{min(model.context_length, 8192) * model.kv_bytes_per_token(_kv_dtype(gpu)) / GiB:.1f} GiB of "
                        f"KV cache, and the budget here is {budget / GiB:.1f} GiB ({hardware.describe()}).")
    chosen.reasons = reasons
    chosen.fallbacks = fallbacks
    return chosen


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"


def _kv_dtype(gpu) -> int:
    return 2 if gpu is not None else 4  # bf16 on GPUs, fp32 on the CPU path


def _weight_bytes(model: ModelProfile, precision: str) -> int:
    if precision == "as-is" or model.file_format == "gguf":  # a GGUF file's size is its weights
        return model.weight_bytes
    return int(model.parameters * BYTES_PER_PARAM[precision])


def _candidates(hw: HardwareProfile, model: ModelProfile, optimize: str, gpu) -> list[tuple[str, str, str]]:
    """(engine, precision, why) in order of preference."""
    if model.file_format == "gguf":  # a GGUF file is llama.cpp's format, on a CPU or offloaded to a GPU
        return [("llamacpp", f"gguf-{model.quantization or 'f16'}", "a GGUF file is served by llama.cpp")]
    if optimize.startswith("gguf"):
        return [("llamacpp", optimize, "asked for")]
    if gpu is None and optimize in ("gptq", "awq"):
        return [("llamacpp", optimize, f"{optimize.upper()} with a calibration set onto llama.cpp's Q4_0 grid, served "
                                       "by its 4-bit CPU kernels (optimize/calibrated.py)")]
    if gpu is not None:
        return _gpu_candidates(hw, model, optimize, gpu)
    if optimize == "none":
        return [("transformers", "fp32", "no optimization asked")]
    if optimize == "int8":
        return [("transformers", "int8", "asked for")]
    options: list[tuple[str, str, str]] = []
    if model.parameters <= SMALL_ON_CPU:
        if model.parameters >= INT8_PAYS_ON_CPU and hw.int8_dot:
            options.append(("transformers", "int8", "dynamic int8 matmuls (VNNI/AMX) beat fp32 at this size"))
        why = ("small enough for the embedded engine; int8 would not pay at this size"
               if model.parameters < INT8_PAYS_ON_CPU else
               "small enough for the embedded engine" + ("" if hw.int8_dot else
                                                         "; without VNNI/AMX, int8 would be slower than fp32"))
        options.append(("transformers", "fp32", why))
    if hw.llamacpp_installed:
        if model.parameters <= Q8_ON_CPU_UP_TO:
            options.append(("llamacpp", "gguf-q8_0", "llama.cpp's CPU kernels; 8-bit keeps the quality"))
        options.append(("llamacpp", "gguf-q4_k_m", "llama.cpp's CPU kernels; 4-bit to fit the memory"))
    elif not options:
        options.append(("transformers", "int8", "llama-cpp-python is not installed; int8 is the smallest here"))
    return options


def _gpu_candidates(hw: HardwareProfile, model: ModelProfile, optimize: str, gpu) -> list[tuple[str, str, str]]:
    """vLLM where installed: a checkpoint's own quantization as it is (GPTQ, AWQ, fp8,
    compressed-tensors), else bf16, fp8 on fp8 tensor cores, then bitsandbytes' in-flight 4-bit.
    Without vLLM, the embedded engine: bf16, fp8 and int8 (torchao), never a 4-bit format it
    cannot run; a pre-quantized GPTQ/AWQ checkpoint then is a clear refusal, not a silent bf16."""
    quantized = model.quantization if model.quantization in PREQUANTIZED else None
    if hw.vllm_installed:
        engine = "vllm"
        if quantized:
            return [(engine, quantized, "the checkpoint is already quantized: vLLM serves it as it is")]
        if optimize in ("gptq", "awq"):
            return [(engine, optimize, f"{optimize.upper()} with a calibration set here (optimize/calibrated.py), "
                                       "written as a compressed-tensors W4A16 checkpoint (group 32) that vLLM serves "
                                       "with its 4-bit kernels (optimize/export.py)")]
        if optimize == "int8":
            raise PlanError("vLLM serves int8 from a checkpoint quantized beforehand, and these weights are not: "
                            "use fp8 or bnb-4bit, which vLLM quantizes as it loads, or gptq/awq, which Shipyard "
                            "calibrates and exports for it")
        half_why = "full quality, and it fits with room for the KV cache"
        smaller = [("fp8", f"{gpu.name} has fp8 tensor cores: half the weights, near-lossless"),
                   ("bnb-4bit", "bitsandbytes quantizes to 4 bits as vLLM loads: a quarter of the memory, no "
                                "calibrated checkpoint needed")]
    else:
        engine = "transformers"
        if quantized:
            raise PlanError(f"this checkpoint is {quantized}-quantized, which the embedded engine cannot run on a "
                            "GPU; install vLLM (`pip install vllm`) to serve it as it is")
        if optimize in ("gptq", "awq", "bnb-4bit"):
            raise PlanError(f"{optimize} on a GPU is served by vLLM, which is not installed (`pip install vllm`)")
        half_why = "full quality; vLLM is not installed, so the embedded engine serves it"
        smaller = [("fp8", f"{gpu.name} has fp8 tensor cores (torchao)"),
                   ("int8", "int8 weights (torchao) halve the memory")]
    if optimize not in ("auto", "none"):
        return [(engine, optimize, "asked for")]
    options = [(engine, "bf16" if gpu.bf16 else "fp16", half_why)]
    if optimize == "auto":
        options += [(engine, precision, why) for precision, why in smaller if precision != "fp8" or gpu.fp8]
    return options


def _sized(engine: str, precision: str, device: str, model: ModelProfile, weights: int, free: int, kv_token: int,
           budget: int, gpu, hw: HardwareProfile) -> Plan:
    """KV cache and batching limits for the memory left after the weights."""
    max_len = model.context_length
    if device == "cuda":
        kv_tokens = int(free // kv_token)
        max_num_seqs = max(1, min(256, kv_tokens // max(1, min(max_len, 2048))))
    else:  # a CPU decodes a handful of sequences usefully at once; cap the cache at what they need
        max_num_seqs = max(1, min(16, hw.cpu_cores * 4))
        kv_tokens = int(min(free // kv_token, max_num_seqs * max_len))
        if kv_tokens < max_len:
            max_len = kv_tokens
    return Plan(engine, precision, device, weights, kv_tokens, kv_tokens * kv_token, max_num_seqs, max_len, budget)
