"""4-bit GPTQ and AWQ with a calibration set (optimize/calibrated.py), the measured choice's
rules (optimize/measure.py) and the memory-bounded reference perplexity (optimize/verify.py)."""

from __future__ import annotations

import json

import pytest
import torch

from shipyard.optimize.calibrated import GROUP, gptq_q4, quantize, rtn_q4
from shipyard.optimize.measure import Candidate, Measurement, choose
from shipyard.optimize.verify import held_out_text, perplexity_hf


def _on_grid(weight: torch.Tensor) -> bool:
    """llama.cpp's Q4_0 quantizer would leave these weights as they are."""
    return torch.equal(rtn_q4(weight), weight)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    torch.manual_seed(0)
    mixing = torch.randn(128, 128) * 0.2 + torch.eye(128)
    x = torch.randn(4096, 128) @ mixing  # correlated input channels, as real activations are
    weight = torch.randn(64, 128)
    hessian = (2 * x.double().T @ x.double()) / x.shape[0]
    rtn, gptq = rtn_q4(weight), rtn_q4(gptq_q4(weight, hessian))  # as quantize() stores it
    error = lambda q: float(((x @ weight.T) - (x @ q.T)).pow(2).mean())  # noqa: E731
    assert error(gptq) < 0.8 * error(rtn)
    assert _on_grid(gptq)
    for start in range(0, 128, GROUP):  # every value is d·k with k in -8..7 for its block's fp16 d
        block = gptq[:, start: start + GROUP]
        scale = block.abs().amax(dim=1, keepdim=True) / 8
        steps = block / torch.where(scale == 0, torch.ones_like(scale), scale)
        assert torch.allclose(steps, steps.round(), atol=1e-3)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_quantization_of_the_tiny_model(tiny_model, tmp_path, method):
    from transformers import AutoModelForCausalLM

    out = quantize(tiny_model, method, out_dir=tmp_path / method)
    report = json.loads((out / "shipyard-quantization.json").read_text())
    assert report["method"] == method and report["calibration_tokens"] > 0
    if method == "awq":
        assert report["alphas"] and all(0 <= a <= 1 for a in report["alphas"].values())
    model = AutoModelForCausalLM.from_pretrained(out)
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert linears and all(_on_grid(m.weight.detach()) for m in linears)  # what the Q4_0 GGUF will hold
    text = held_out_text(4000)
    loss = perplexity_hf(out, text).perplexity / perplexity_hf(tiny_model, text).perplexity - 1
    assert abs(loss) < 0.05
    assert quantize(tiny_model, method, out_dir=tmp_path / method) == out  # cached


def test_the_reference_streams_from_disk_within_a_small_budget(tiny_model):
    text = held_out_text(3000)
    whole = perplexity_hf(tiny_model, text)
    streamed = perplexity_hf(tiny_model, text, max_memory_bytes=64 * 1024)  # far below the weights' size
    assert streamed.perplexity == pytest.approx(whole.perplexity, rel=1e-5)
    assert streamed.decode_tokens_per_s is None  # offloaded: no speed claimed


def _m(label: str, loss: float, c1: float, c8: float, ttft: float, mib: int) -> Measurement:
    engine, precision = label.split("/")
    return Measurement(Candidate(engine, precision), perplexity=10 * (1 + loss / 100), loss_pct=loss,
                       decode_tokens_per_s=c1, throughput_tokens_per_s=c8, ttft_ms=ttft, resident_bytes=mib << 20,
                       within_bound=loss <= 2)


def test_choice_by_objective_within_the_bounds():
    measured = [_m("transformers/fp32", 0, 800, 2000, 8, 60), _m("llamacpp/gguf-q8_0", 0.1, 2000, 2400, 5, 50),
                _m("llamacpp/gguf-q4_k_m", 3.5, 2600, 3000, 4, 40), _m("llamacpp/gptq", 0.5, 2100, 2900, 1500, 45)]
    best, reasons = choose(measured, "throughput", 2.0, 1000)
    assert best.candidate.precision == "gguf-q8_0"  # q4_k_m loses too much; gptq's TTFT is past the bound
    assert any("q4_k_m" in r and "3.50% perplexity loss" in r for r in reasons)
    assert any("gptq" in r and "TTFT" in r for r in reasons)
    assert choose(measured, "latency", 2.0, 1000)[0].candidate.precision == "gptq"
    assert choose(measured, "memory", 2.0, 1000)[0].candidate.precision == "gptq"
    assert choose(measured, "throughput", 5.0, 1000)[0].candidate.precision == "gguf-q4_k_m"
    failed = Measurement(Candidate("llamacpp", "awq"), error="RuntimeError: no")
    assert choose([failed], "throughput", 2.0, 1000)[0] is None
    with pytest.raises(ValueError):
        choose(measured, "vibes", 2.0, 1000)
