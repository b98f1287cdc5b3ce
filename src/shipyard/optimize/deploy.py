"""`shipyard deploy MODEL`: profile, plan, apply, verify, write the deployment — then serve.

Applying a plan turns it into a deployment as shipyard.yaml spells one:
- `transformers` plans: the embedded engine with the plan's quantization, KV slots and context;
- `llamacpp` plans: the model converted to GGUF (cached by content hash) and served in process by
  the `llamacpp` engine (llama.cpp's forward, the embedded engine's batching and sampling);
- `vllm` plans: `vllm serve` launched with `--quantization`, `--max-model-len`, `--max-num-seqs`.
Verification compares the perplexity of what will be served with the unquantized model's on
held-out text; past the bound, the plan's next choice is applied instead, and the report says so.
The plan (with its reasons and the verification) is saved where `GET /admin/deployments/{name}/plan`
finds it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shipyard.engines.llamacpp_engine.native import MAX_SEQUENCES
from shipyard.optimize.profile import HardwareProfile, ModelProfile
from shipyard.optimize.select import Plan, PlanError, plan

FULL_PRECISION = {"fp32", "bf16", "fp16"}
# our precision → vLLM's `--quantization` (vllm/model_executor/layers/quantization: QuantizationMethods)
VLLM_QUANTIZATION = {"fp8": "fp8", "gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors",
                     "bnb-4bit": "bitsandbytes"}


@dataclass
class Deployed:
    name: str
    plan: Plan
    deployment: dict
    verification: list[dict] = field(default_factory=list)  # one entry per choice tried
    artifact: str | None = None  # the converted file, when there is one

    def report(self) -> dict:
        return {"deployment": self.name, "plan": self.plan.as_dict(), "config": self.deployment,
                "verification": self.verification, "artifact": self.artifact}


def deployment_name(model_path: Path) -> str:
    stem = model_path.stem if model_path.suffix == ".gguf" else model_path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-").lower() or "model"


def make_plan(model_path: Path, optimize: str) -> tuple[HardwareProfile, ModelProfile, Plan]:
    hardware, model = HardwareProfile.detect(), ModelProfile.read(model_path)
    return hardware, model, plan(hardware, model, optimize)


def deployment_for(chosen: Plan, model_path: Path, artifact: Path | None = None) -> dict:
    """The plan as a shipyard.yaml deployment."""
    if chosen.engine == "transformers":
        return {"engine": "transformers", "model": str(model_path), "device": chosen.device,
                "quantization": chosen.precision if chosen.precision in ("int8", "fp8") else "none",
                "max_num_seqs": chosen.max_num_seqs, "max_model_len": chosen.max_model_len}
    if chosen.engine == "llamacpp":
        deployment = {"engine": "llamacpp", "model": str(artifact or model_path),
                      "max_num_seqs": min(chosen.max_num_seqs, MAX_SEQUENCES), "max_model_len": chosen.max_model_len}
        if model_path.is_dir():  # converted here: the model's own tokenizer files are exact
            deployment["tokenizer"] = str(model_path)
        return deployment
    args = ["--max-model-len", str(chosen.max_model_len), "--max-num-seqs", str(chosen.max_num_seqs)]
    if artifact is not None:  # our own GPTQ/AWQ, exported for vLLM (apply())
        args += ["--quantization", "compressed-tensors"]
    elif chosen.precision in VLLM_QUANTIZATION:
        args += ["--quantization", VLLM_QUANTIZATION[chosen.precision]]
    return {"replicas": [{"engine": "launch", "kind": "vllm", "model": str(artifact or model_path), "name": "vllm-0",
                          "args": args}]}


def apply(model_path: Path, chosen: Plan, progress=None) -> Path | None:
    """Convert or quantize what the plan needs on disk (cached); None when nothing is needed."""
    if chosen.engine == "vllm" and chosen.precision in ("gptq", "awq") and not _prequantized(model_path):
        from shipyard.optimize.calibrated import quantize
        from shipyard.optimize.export import export_compressed_tensors

        if progress is not None:
            progress(f"{chosen.precision.upper()} with a calibration set, exported as compressed-tensors for vLLM")
        return export_compressed_tensors(quantize(model_path, chosen.precision))
    if chosen.engine != "llamacpp" or model_path.suffix == ".gguf":
        return None
    from shipyard.optimize.measure import Candidate, build

    if progress is not None:
        progress(f"converting to GGUF {chosen.precision.removeprefix('gguf-')}")
    return build(model_path, Candidate("llamacpp", chosen.precision))


def _prequantized(model_path: Path) -> bool:
    config = model_path / "config.json"
    return model_path.is_dir() and config.is_file() and "quantization_config" in json.loads(config.read_text())


def verify(model_path: Path, chosen: Plan, artifact: Path | None, bound_pct: float, progress=None) -> dict | None:
    """Perplexity of what will be served against the unquantized model (None: nothing to check)."""
    from shipyard.optimize.verify import compare, perplexity_gguf, perplexity_hf

    quantized = chosen.precision not in FULL_PRECISION and chosen.precision != "gguf-f16"
    exported = chosen.engine == "vllm" and artifact is not None
    if not quantized or model_path.suffix == ".gguf" or (chosen.engine == "vllm" and not exported):
        return None
    if progress is not None:
        progress(f"verifying {chosen.precision}: perplexity on held-out text")
    text, reference = _reference(model_path, chosen.budget_bytes)
    if exported:  # the calibrated folder holds exactly the exported weights; measured here, as the reference
        source = Path(json.loads((artifact / "shipyard-export.json").read_text())["from"])
        candidate = perplexity_hf(source, text, max_memory_bytes=chosen.budget_bytes)
    elif artifact is not None:
        candidate = perplexity_gguf(artifact, text)
    else:
        candidate = perplexity_hf(model_path, text, chosen.precision, device=chosen.device)
    verdict = compare(reference, candidate, bound_pct)
    return {"precision": chosen.precision, "reference_perplexity": round(reference.perplexity, 4),
            "perplexity": round(candidate.perplexity, 4), "loss_pct": round(verdict.loss_pct, 3),
            "bound_pct": bound_pct, "kept": verdict.kept,
            "reference_decode_tokens_per_s": round(reference.decode_tokens_per_s or 0, 1),
            "decode_tokens_per_s": round(candidate.decode_tokens_per_s or 0, 1)}


@functools.lru_cache(maxsize=4)
def _reference(model_path: Path, budget_bytes: int):
    """The unquantized model on the held-out text, measured once however many choices are tried,
    within the plan's memory budget (weights past it streamed from disk)."""
    from shipyard.optimize.verify import held_out_text, perplexity_hf

    text = held_out_text()
    return text, perplexity_hf(model_path, text, max_memory_bytes=budget_bytes)


def deploy(model_path: Path, optimize: str, bound_pct: float, progress=None) -> Deployed:
    """Plan, apply and verify; a choice that loses too much quality gives way to the next."""
    hardware, model, chosen = make_plan(model_path, optimize)
    name = deployment_name(model_path)
    tried: list[dict] = []
    choices = [chosen.precision, *chosen.fallbacks] if optimize == "auto" else [chosen.precision]
    for precision in choices:
        current = chosen if precision == chosen.precision else _replan(hardware, model, precision)
        artifact = apply(model_path, current, progress)
        check = verify(model_path, current, artifact, bound_pct, progress)
        if check is not None:
            tried.append(check)
        if check is None or check["kept"]:
            current.reasons = chosen.reasons + ([f"verification: {current.precision} lost "
                                                 f"{check['loss_pct']:.2f}% perplexity (bound {bound_pct}%)"]
                                                if check else [])
            if current is not chosen:
                current.reasons.append(f"fell back from {chosen.precision}: it lost more than {bound_pct}%")
            return Deployed(name, current, deployment_for(current, model_path, artifact), tried,
                            str(artifact) if artifact else None)
    raise PlanError(f"every choice lost more than {bound_pct}% perplexity: " +
                    ", ".join(f"{t['precision']} {t['loss_pct']:.2f}%" for t in tried))


def deploy_measured(model_path: Path, objective: str, bound_pct: float, max_ttft_ms: float,
                    progress=None, refresh: bool = False) -> tuple[Deployed, object]:
    """The measured choice (optimize/measure.py) as a deployment: what was measured is what is
    served, with the batch size and threads that measured best. Returns (deployed, selection)."""
    from shipyard.optimize.measure import engine_settings, select
    from shipyard.optimize.prequantized import SUPPORTED, dequantize, describe, quantization_config

    hardware, model, predicted = make_plan(model_path, "auto")
    name = deployment_name(model_path)
    unpacked = []
    spec = quantization_config(model_path) if model_path.is_dir() else None
    if spec and spec.get("quant_method") in SUPPORTED:  # a CPU has no loader for the packed format
        if progress is not None:
            progress(f"unpacking the {describe(spec)} checkpoint")
        model_path = dequantize(model_path)
        unpacked.append(f"unpacked the {describe(spec)} checkpoint into the weights it stands for; "
                        "quality is measured against it")
    selection = select(model_path, objective, bound_pct, max_ttft_ms, progress, hardware, refresh)
    selection.reasons[:0] = unpacked
    chosen = selection.chosen
    if chosen is None:
        raise PlanError("no candidate measured within the bounds: " + "; ".join(selection.reasons))
    candidate = chosen.candidate
    artifact = Path(chosen.artifact) if chosen.artifact else None
    max_len = min(model.context_length, predicted.max_model_len)
    predicted.engine, predicted.precision = candidate.engine, candidate.precision
    predicted.max_num_seqs, predicted.max_model_len = candidate.max_num_seqs, max_len
    predicted.kv_cache_tokens = candidate.max_num_seqs * max_len
    predicted.kv_cache_bytes = predicted.kv_cache_tokens * model.kv_bytes_per_token(4)
    predicted.weight_bytes = artifact.stat().st_size if artifact else predicted.weight_bytes
    predicted.reasons = predicted.reasons[:2] + selection.reasons
    predicted.fallbacks = []
    deployment = engine_settings(candidate, model_path, artifact, max_len)
    verification = [{"precision": m.candidate.precision, "perplexity": m.perplexity, "loss_pct": m.loss_pct,
                     "reference_perplexity": selection.reference_perplexity, "bound_pct": bound_pct,
                     "kept": m.within_bound} for m in selection.measurements if m.candidate.threads == 1
                    and m.candidate.max_num_seqs == 16]
    deployed = Deployed(name, predicted, deployment, verification,
                        str(artifact) if artifact else None)
    return deployed, selection


def _replan(hardware: HardwareProfile, model: ModelProfile, precision: str) -> Plan:
    option = precision if precision in ("int8", "gguf-q8_0", "gguf-q4_k_m", "fp8", "gptq", "awq") else "none"
    return plan(hardware, model, option)


def write_config(config_path: Path, deployed: Deployed) -> None:
    """Add (or replace) the deployment in shipyard.yaml, keeping everything else in it."""
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    config = config or {}
    config.setdefault("deployments", {})[deployed.name] = deployed.deployment
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def save_plan(data_dir: Path, deployed: Deployed) -> Path:
    folder = data_dir / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{deployed.name}.json"
    path.write_text(json.dumps(deployed.report(), indent=2))
    return path


def load_plan(data_dir: Path, name: str) -> dict | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", name) or name.startswith("."):
        return None
    path = data_dir / "plans" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
