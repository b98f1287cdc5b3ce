"""The redesign step, side by side: the gateway's own cost and the demo model's serving throughput
with the code before the move (a git ref) and after it (this tree), in one run, turns alternating.

    python bench/redesign.py [--before 6ea1d44] [--rounds 3] [--duration 5]

Each turn starts Shipyard from one tree (its `src` first on PYTHONPATH) and measures:
- gateway: a zero-latency OpenAI upstream behind Shipyard (1 worker), closed-loop load at
  concurrency 50, non-streamed and streamed: requests/s, P50 and P99 (bench/gateway_overhead.py's
  load generator);
- serving: the demo model, streamed, 64 tokens each, at concurrency 1 and 8: tokens/s and TTFT P50
  (bench/serving.py's load generator).
Figures are medians over the rounds; the ratio is after ÷ before. Prints a table; writes
bench/results/redesign.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

import gateway_overhead  # noqa: E402
import serving  # noqa: E402


def _with_source(src: Path):
    """Shipyard processes started now import this tree's code."""
    os.environ["PYTHONPATH"] = f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"


def gateway_turn(upstream: str, workdir: Path, args) -> dict:
    proc, url = gateway_overhead.start_shipyard(upstream, workdir)
    try:
        figures = {}
        for stream in (False, True):
            result = asyncio.run(gateway_overhead.closed_loop(url, gateway_overhead.ADMIN, stream, args.concurrency,
                                                              args.duration))
            figures["stream" if stream else "plain"] = {k: result[k] for k in ("rps", "p50_ms", "p99_ms")}
        return figures
    finally:
        gateway_overhead._stop([proc])


def serving_turn(model: str, workdir: Path) -> dict:
    port = serving.free_port()
    with open(workdir / "serving.log", "a") as log:
        proc = serving.start_shipyard(model, port, 1, 16, 1024, log, "auto")
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            return {f"c{c}": {k: v for k, v in asyncio.run(serving.load(url, "demo", c, max(8, 2 * c), 64,
                                                                       {"ignore_eos": True})).items()
                              if k in ("tokens_per_s", "ttft_p50_ms")} for c in (1, 8)}
        finally:
            proc.terminate()
            proc.wait(30)


def _median(turns: list[dict]) -> dict:
    first = turns[0]
    return {k: _median([t[k] for t in turns]) if isinstance(v, dict) else statistics.median(t[k] for t in turns)
            for k, v in first.items()}


def _ratios(before: dict, after: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in before.items():
        if isinstance(value, dict):
            out.update(_ratios(value, after[key], f"{prefix}{key}."))
        elif value:
            out[f"{prefix}{key}"] = after[key] / value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="6ea1d44", help="git ref of the code before the move")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    from shipyard.demo.build import default_demo_path

    model = str(default_demo_path())
    if not Path(model, "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    base_path = os.environ.get("PYTHONPATH", "")
    turns: dict[str, dict[str, list]] = {"before": {"gateway": [], "serving": []},
                                         "after": {"gateway": [], "serving": []}}
    with tempfile.TemporaryDirectory(prefix="shipyard-redesign-") as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        upstream, upstream_url = gateway_overhead.start_upstream()
        try:
            for round_ in range(args.rounds):
                for label, src in (("before", before / "src"), ("after", ROOT / "src"))[::1 if round_ % 2 == 0 else -1]:
                    os.environ["PYTHONPATH"] = base_path
                    _with_source(src)
                    workdir = tmp / f"{label}-{round_}"
                    workdir.mkdir()
                    turns[label]["gateway"].append(gateway_turn(upstream_url, workdir, args))
                    turns[label]["serving"].append(serving_turn(model, workdir))
                    print(f"round {round_ + 1} {label}: done", flush=True)
        finally:
            os.environ["PYTHONPATH"] = base_path
            upstream.terminate()
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    results = {label: {part: _median(runs) for part, runs in parts.items()} for label, parts in turns.items()}
    results["ratio_after_over_before"] = _ratios(results["before"], results["after"])
    results.update({"before_ref": args.before, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d")})
    print(f"\n{'figure':<36}{'before':>10}{'after':>10}{'ratio':>8}")
    for key, ratio in results["ratio_after_over_before"].items():
        part, rest = key.split(".", 1)
        b, a = results["before"][part], results["after"][part]
        for piece in rest.split("."):
            b, a = b[piece], a[piece]
        print(f"{key:<36}{b:>10.1f}{a:>10.1f}{ratio:>8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "redesign.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'redesign.json'}")


if __name__ == "__main__":
    main()
