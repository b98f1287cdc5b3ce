"""Measured selection: build every way of serving the model that fits here, measure each on this
machine, and choose by what the operator asked for.

A candidate is an engine, a precision or format, a thread count and a batch size. Each one is
built (converted or quantized, cached by content hash), its quality measured (perplexity on
held-out text against the unquantized model, which is streamed from disk when it would not fit the
plan's memory budget), and it is run for a moment on the real engine: decode tokens/s for one
request, throughput at the target concurrency, time to first token, and the resident memory it
added. The batch size and thread count are then tried around the best precision.

`choose` keeps the candidates within the perplexity bound and picks by objective:
`throughput` (the default: the most tokens/s at the target concurrency among those whose TTFT is
within the bound), `latency` (the fastest single stream) or `memory` (the least resident memory).
Measurements are cached by (hardware fingerprint, model content hash, Shipyard version), so a
second deploy on the same machine measures nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shipyard import __version__
from shipyard.optimize.profile import HardwareProfile, ModelProfile
from shipyard.optimize.select import BYTES_PER_PARAM, CPU_SHARE

OBJECTIVES = ("throughput", "latency", "memory")
TARGET_CONCURRENCY = 8
DECODE_TOKENS = 64
REPEATS = 3  # short runs on a shared machine: the median of three
METHOD = 4  # how candidates are measured (4: the llamacpp engine's C decode loop): a change re-measures every cached model
QUALITY_TEXT_CHARS = 12_000


@dataclass(frozen=True)
class Candidate:
    engine: str  # transformers | llamacpp
    precision: str  # fp32 | int8 | gguf-f16 | gguf-q8_0 | gguf-q4_k_m | gguf-q4_0 | gptq | awq
    threads: int = 1
    max_num_seqs: int = 16
    flash_attn: str = "auto"  # llama.cpp's

    @property
    def label(self) -> str:
        label = f"{self.engine}/{self.precision} t{self.threads} s{self.max_num_seqs}"
        return label if self.flash_attn == "auto" else f"{label} fa-{self.flash_attn}"


@dataclass
class Measurement:
    candidate: Candidate
    perplexity: float | None = None
    loss_pct: float | None = None
    decode_tokens_per_s: float = 0.0  # one request
    throughput_tokens_per_s: float = 0.0  # TARGET_CONCURRENCY requests
    ttft_ms: float = 0.0
    resident_bytes: int = 0
    artifact: str | None = None
    error: str | None = None
    within_bound: bool = False

    def as_dict(self) -> dict:
        return {**asdict(self), "candidate": asdict(self.candidate), "label": self.candidate.label}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        data = {k: v for k, v in data.items() if k != "label"}
        return cls(**{**data, "candidate": Candidate(**data["candidate"])})


@dataclass
class Selection:
    objective: str
    chosen: Measurement | None
    measurements: list[Measurement]
    reasons: list[str] = field(default_factory=list)
    reference_perplexity: float | None = None
    cached: bool = False

    def as_dict(self) -> dict:
        return {"objective": self.objective, "chosen": self.chosen.candidate.label if self.chosen else None,
                "reasons": self.reasons, "reference_perplexity": self.reference_perplexity, "cached": self.cached,
                "measurements": [m.as_dict() for m in self.measurements]}


# ------------------------------------------------------------------ candidates
def precisions(hardware: HardwareProfile, model: ModelProfile) -> list[tuple[str, str]]:
    """(engine, precision) pairs whose weights fit this machine's memory budget, on a CPU."""
    budget = hardware.memory_bytes * CPU_SHARE
    pairs = [("transformers", "fp32"), ("transformers", "int8")]
    if hardware.llamacpp_installed:
        pairs += [("llamacpp", p) for p in ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0")]
        if model.architecture_is_llama_like:
            pairs += [("llamacpp", "gptq"), ("llamacpp", "awq")]
    return [(e, p) for e, p in pairs if model.parameters * BYTES_PER_PARAM[p] * 1.2 < budget]


def fingerprint(hardware: HardwareProfile, model_path: Path) -> str:
    """What a measurement depends on: this machine, the model's bytes, and Shipyard's version."""
    from shipyard.optimize.gguf import model_fingerprint

    content = model_fingerprint(model_path) if model_path.is_dir() else _file_hash(model_path)
    machine = json.dumps({"cores": hardware.cpu_cores, "memory": hardware.memory_bytes,
                          "flags": sorted(hardware.cpu_flags), "cpu": _cpu_model(),
                          "gpus": [g.name for g in hardware.gpus]}, sort_keys=True)
    return hashlib.sha256(f"{machine}\0{content}\0{__version__}\0{METHOD}".encode()).hexdigest()[:20]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# ------------------------------------------------------------------ building
def build(model_dir: Path, candidate: Candidate) -> Path | None:
    """The file the candidate serves (converted or quantized once, cached), or None (the folder)."""
    from shipyard.optimize.gguf import convert_to_gguf

    precision = candidate.precision
    if precision in ("gptq", "awq"):
        from shipyard.optimize.calibrated import quantize

        return convert_to_gguf(quantize(model_dir, precision), "q4_0", base="f32")
    if precision.startswith("gguf-"):
        return convert_to_gguf(model_dir, precision.removeprefix("gguf-"))
    return None


def engine_settings(candidate: Candidate, model_dir: Path, artifact: Path | None, max_model_len: int) -> dict:
    """The candidate as a shipyard.yaml deployment."""
    common = {"max_num_seqs": candidate.max_num_seqs, "num_threads": candidate.threads,
              "max_model_len": max_model_len}
    if candidate.engine == "llamacpp":
        return {"engine": "llamacpp", "model": str(artifact), "tokenizer": str(model_dir),
                "flash_attn": candidate.flash_attn, **common}
    return {"engine": "transformers", "model": str(model_dir), "device": "cpu",
            "quantization": "int8" if candidate.precision == "int8" else "none", **common}


# ------------------------------------------------------------------ measuring
def _quality(candidate: Candidate, model_dir: Path, artifact: Path | None, text: str) -> float:
    from shipyard.optimize.verify import perplexity_gguf, perplexity_hf

    if artifact is not None:
        return perplexity_gguf(artifact, text).perplexity
    return perplexity_hf(model_dir, text, "int8" if candidate.precision == "int8" else "none").perplexity


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _settle_memory() -> int:
    """Free what earlier candidates left, reset the peak, and return the resident size now."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    return _rss()


async def _speed(engine, prompt_ids: list[int], concurrency: int, tokens: int) -> tuple[float, float, float]:
    """(tokens/s, decode tokens/s of one stream, TTFT ms): `concurrency` greedy requests of `tokens`."""
    from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams
    from shipyard.engines.side_requests import new_engine_request_id

    async def one():
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        request = GenerationRequest(new_engine_request_id(), Prompt(token_ids=prompt_ids), params, time.monotonic(),
                                    list(prompt_ids))
        started, first, last, count = time.perf_counter(), None, None, 0
        async for chunk in engine.generate(request):
            if chunk.token_ids:
                now = time.perf_counter()
                first = first or now
                last = now
                count += len(chunk.token_ids)
        return started, first, last, count

    started = time.perf_counter()
    runs = await asyncio.gather(*(one() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    total = sum(r[3] for r in runs)
    s, first, last, count = runs[0]
    decode = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return total / wall, decode, (first - s) * 1000


async def _run_engine(settings: dict, name: str, prompt_ids: list[int]) -> tuple[float, float, float]:
    from shipyard.engines.llamacpp_engine import LlamaCppEngine
    from shipyard.engines.settings import LlamaCppEngineConfig, TransformersEngineConfig
    from shipyard.engines.transformers_engine import TransformersEngine

    settings = {k: v for k, v in settings.items() if k != "engine"}
    if "tokenizer" in settings:
        engine = LlamaCppEngine(LlamaCppEngineConfig(**settings), name)
    else:
        engine = TransformersEngine(TransformersEngineConfig(**settings, prefix_cache_mib=0), name)
    await engine.start()
    try:
        await _speed(engine, prompt_ids, 1, 8)  # warm-up
        singles = [await _speed(engine, prompt_ids, 1, DECODE_TOKENS) for _ in range(REPEATS)]
        batches = [await _speed(engine, prompt_ids, TARGET_CONCURRENCY, DECODE_TOKENS) for _ in range(REPEATS)]
        return (statistics.median(r[1] for r in singles), statistics.median(r[0] for r in batches),
                statistics.median(r[2] for r in singles))
    finally:
        await engine.stop()


def measure(model_dir: Path, candidate: Candidate, text: str, reference: float, bound_pct: float,
            prompt_ids: list[int], max_model_len: int, quality: dict | None = None) -> Measurement:
    """One candidate, built and run here. `quality` remembers perplexities per precision (the
    thread count and batch size do not change what the model computes)."""
    result = Measurement(candidate)
    try:
        artifact = build(model_dir, candidate)
        result.artifact = str(artifact) if artifact else None
        known = (quality or {}).get(candidate.precision)
        result.perplexity = known if known is not None else _quality(candidate, model_dir, artifact, text)
        if quality is not None:
            quality[candidate.precision] = result.perplexity
        result.loss_pct = (result.perplexity - reference) / reference * 100
        result.within_bound = result.loss_pct <= bound_pct
        settings = engine_settings(candidate, model_dir, artifact, max_model_len)
        before = _settle_memory()
        result.decode_tokens_per_s, result.throughput_tokens_per_s, result.ttft_ms = asyncio.run(
            _run_engine(settings, "measure", prompt_ids))
        result.resident_bytes = max(0, _peak_rss() - before)
    except Exception as exc:  # a candidate that cannot be built or run here is reported, not fatal
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        result.within_bound = False
    return result


# ------------------------------------------------------------------ choosing
def choose(measurements: list[Measurement], objective: str, bound_pct: float,
           max_ttft_ms: float) -> tuple[Measurement | None, list[str]]:
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    ran = [m for m in measurements if m.error is None]
    kept = [m for m in ran if m.loss_pct is not None and m.loss_pct <= bound_pct]
    reasons = [f"{m.candidate.label}: refused, {m.loss_pct:.2f}% perplexity loss > {bound_pct}% bound"
               for m in ran if m not in kept]
    reasons += [f"{m.candidate.label}: could not run here ({m.error})" for m in measurements if m.error]
    if objective == "throughput":
        fast_enough = [m for m in kept if m.ttft_ms <= max_ttft_ms]
        reasons += [f"{m.candidate.label}: refused, TTFT {m.ttft_ms:.0f} ms > {max_ttft_ms:.0f} ms bound"
                    for m in kept if m not in fast_enough]
        pool, key, what = fast_enough, (lambda m: m.throughput_tokens_per_s), "tokens/s at concurrency 8"
    elif objective == "latency":
        pool, key, what = kept, (lambda m: m.decode_tokens_per_s), "decode tokens/s of one stream"
    else:
        pool, key, what = kept, (lambda m: -m.resident_bytes), "least resident memory"
    if not pool:
        return None, reasons + ["no candidate is within the bounds"]
    best = max(pool, key=key)
    value = (f"{best.resident_bytes / 2**20:.0f} MiB" if objective == "memory"
             else f"{key(best):.0f} tokens/s")
    runner_up = sorted(pool, key=key, reverse=True)[1:2]
    versus = (f"; next {runner_up[0].candidate.label} at "
              + (f"{runner_up[0].resident_bytes / 2**20:.0f} MiB" if objective == "memory"
                 else f"{key(runner_up[0]):.0f}")) if runner_up else ""
    reasons.insert(0, f"chose {best.candidate.label} for {objective}: best {what} ({value}{versus}), "
                      f"{best.loss_pct:.2f}% perplexity loss (bound {bound_pct}%)")
    return best, reasons


# ------------------------------------------------------------------ the whole selection
def cache_path(key: str) -> Path:
    from shipyard.engines.build_cache import cache_root

    return cache_root() / "measurements" / f"{key}.json"


def reference_perplexity(model_dir: Path, text: str, budget_bytes: int) -> float:
    from shipyard.optimize.verify import perplexity_hf

    return perplexity_hf(model_dir, text, max_memory_bytes=budget_bytes).perplexity


def select(model_dir: Path, objective: str = "throughput", bound_pct: float = 2.0, max_ttft_ms: float = 1000.0,
           progress=None, hardware: HardwareProfile | None = None, refresh: bool = False) -> Selection:
    """Measure every candidate that fits (or read the cached measurements) and choose."""
    from transformers import AutoTokenizer

    from shipyard.optimize.verify import held_out_text

    hardware = hardware or HardwareProfile.detect()
    model = ModelProfile.read(model_dir)
    key = fingerprint(hardware, model_dir)
    path = cache_path(key)
    if path.is_file() and not refresh:
        data = json.loads(path.read_text())
        measurements = [Measurement.from_dict(m) for m in data["measurements"]]
        for m in measurements:  # the bound may differ from the run that measured
            m.within_bound = m.error is None and m.loss_pct is not None and m.loss_pct <= bound_pct
        chosen, reasons = choose(measurements, objective, bound_pct, max_ttft_ms)
        return Selection(objective, chosen, measurements, reasons, data["reference_perplexity"], cached=True)
    text = held_out_text(QUALITY_TEXT_CHARS)
    budget = int(hardware.memory_bytes * CPU_SHARE)
    say = progress or (lambda message: None)
    say("measuring the unquantized model's perplexity (streamed within the memory budget)")
    reference = reference_perplexity(model_dir, text, budget)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tokenizer(text[:600], add_special_tokens=False)["input_ids"][:96]
    max_model_len = min(model.context_length, 2048)
    quality: dict[str, float] = {}
    measurements: list[Measurement] = []
    if not hardware.llamacpp_installed:
        say("llama-cpp-python is not installed: llama.cpp's candidates are left out")
    for engine, precision in precisions(hardware, model):
        say(f"measuring {engine}/{precision}")
        measurements.append(measure(model_dir, Candidate(engine, precision), text, reference, bound_pct, prompt_ids,
                                    max_model_len, quality))
    # around the best precision: more threads, other batch sizes
    best, _ = choose(measurements, objective, bound_pct, max_ttft_ms)
    if best is not None:
        base = best.candidate
        variants = {Candidate(base.engine, base.precision, base.threads, seqs) for seqs in (TARGET_CONCURRENCY, 32)}
        if hardware.cpu_cores > 1:
            variants.add(Candidate(base.engine, base.precision, hardware.cpu_cores, base.max_num_seqs))
        if base.engine == "llamacpp":  # llama.cpp's flash attention helps some shapes and hurts others
            variants.add(Candidate(base.engine, base.precision, base.threads, base.max_num_seqs, "off"))
            if hardware.cpu_cores > 1:
                variants.add(Candidate(base.engine, base.precision, hardware.cpu_cores, base.max_num_seqs, "off"))
        for variant in sorted(variants - {base}, key=lambda c: c.label):
            say(f"measuring {variant.label}")
            measurements.append(measure(model_dir, variant, text, reference, bound_pct, prompt_ids, max_model_len,
                                        quality))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"reference_perplexity": reference, "fingerprint": key,
                                "measurements": [m.as_dict() for m in measurements]}, indent=2))
    chosen, reasons = choose(measurements, objective, bound_pct, max_ttft_ms)
    if not hardware.llamacpp_installed:
        reasons.append("llama.cpp's candidates (GGUF, GPTQ, AWQ) were not measured: llama-cpp-python is not installed "
                       "(scripts/llama-cpp.sh builds it once)")
    return Selection(objective, chosen, measurements, reasons, reference)
