"""Optimization on the demo model: fp32, dynamic int8, GGUF f16 / q8_0 / q4_K_M / q4_0, GPTQ and
AWQ (calibrated, on the Q4_0 grid), the deploy's measured choice, and llama.cpp's C++ server.

    python bench/optimization.py [--requests 8] [--max-tokens 64] [--repeat 3]

Every figure is the median of `--repeat` measurements (3 by default: single runs on a shared
machine do not replicate), each variant's measurements taken back to back on one server.

Each variant is served by `shipyard serve` (the embedded PyTorch engine for fp32 and int8; the
in-process `llamacpp` engine for the GGUF files) and measured through the API with streamed
chat completions at concurrency 1 and 8: decode tokens/s (completion tokens over wall time),
time to first token, and the resident memory of the serving process tree. Perplexity on held-out
text comes from shipyard.optimize.verify (the same windows for every format).

The deploy's choice (`shipyard deploy --objective throughput`, its measurements as cached for
this machine, else made now) is served and measured the same way; `deploy_choice_vs_best_ratio`
is its tokens/s at concurrency 8 over the best variant within the 2% perplexity bound. Last,
llama.cpp's own C++ `llama-server` (built once from the vendored sources by
scripts/llama-server.sh, 1 thread, 8 slots) serves the same q8_0 file, called directly:
`llama_server_ratio_c1` / `_c8` are Shipyard's fastest path on that same file (llama.cpp's flash
attention on or off, whichever measured faster at that concurrency) over it. For those ratios the
three servers run side by side and are measured in turn, round after round (at least 5, each
round starting with the next server, 4× the requests of a variant's measurement), so both sides
of each ratio come from the same minutes of this shared machine.
Prints a table; writes bench/results/optimization.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from harness import serve_deployment  # noqa: E402
from gateway_overhead import ADMIN, _wait, free_port  # noqa: E402


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        stack.extend(int(c) for c in children)
    return total


def _llama_server(gguf: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    """llama.cpp's C++ server on the file: one thread, 8 slots of the model's context each."""
    binary = subprocess.run([str(ROOT / "scripts" / "llama-server.sh")], capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    port = free_port()
    proc = subprocess.Popen([binary, "-m", str(gguf), "-a", "demo", "--host", "127.0.0.1", "--port", str(port),
                             "-t", "1", "-np", "8", "-c", str(8 * 1024), "--no-webui"],
                            stdout=open(workdir / "llama-server.log", "w"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{port}/v1/models", timeout=120)
    return proc, f"http://127.0.0.1:{port}"


async def _load(url: str, key: str, concurrency: int, requests: int, max_tokens: int, no_stop: dict) -> dict:
    import aiohttp

    headers = {"authorization": f"Bearer {key}"}
    ttfts: list[float] = []
    errors: list[str] = []
    tokens = 0
    queue = list(range(requests))

    async def one(session, index: int) -> None:
        nonlocal tokens
        body = {"model": "demo", "messages": [{"role": "user", "content": f"What is a tuple in Python? ({index})"}],
                "max_tokens": max_tokens, "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True},
                "logit_bias": no_stop}  # every request runs to max_tokens (llama.cpp's server has no ignore_eos)
        start = time.perf_counter()
        first = None
        pieces, reported = 0, None  # llama-cpp-python's own server reports no usage in streams
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status != 200:
                errors.append(f"{response.status} {(await response.text())[:200]}")
                return
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                event = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - start
                if event.get("usage"):
                    reported = event["usage"]["completion_tokens"]
        tokens += reported if reported is not None else pieces
        if first is not None:
            ttfts.append(first * 1000)

    async def user(session) -> None:
        while queue:
            await one(session, queue.pop())

    # a connection per request: llama-server (cpp-httplib) closes a kept-alive one after a few requests
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(force_close=True)) as session:
        await one(session, -1)  # warm-up
        tokens, ttfts[:] = 0, []
        started = time.perf_counter()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"tokens_per_s": tokens / elapsed, "ttft_ms_p50": statistics.median(ttfts) if ttfts else None,
            "completion_tokens": tokens, "errors": errors[:3], "error_count": len(errors)}


def _measure(proc: subprocess.Popen, url: str, key: str, args) -> dict:
    figures = {f"c{c}": asyncio.run(_load(url, key, c, args.requests, args.max_tokens, args.no_stop)) for c in (1, 8)}
    figures["rss_mib"] = round(_tree_rss(proc.pid) / 2**20, 1)
    return figures


SAME_FILE = ("gguf-q8_0", "gguf-q8_0 fa-off")  # Shipyard's paths on the file llama-server serves
SAME_FILE_REQUESTS = 4  # × --requests per measurement there: a c=1 run of 8 requests lasts 0.2 s


def _side_by_side(variants: dict, gguf: Path, workdir: Path, args, rounds: int) -> dict:
    """Shipyard's q8_0 servers and llama-server up together, measured in turn, round after round:
    the ratios compare the same minutes of this shared machine (medians per server)."""
    servers = {name: serve_deployment(variants[name][0], workdir, f"same-{index}")
               for index, name in enumerate(SAME_FILE)}
    servers["llama-server"] = _llama_server(gguf, workdir)
    longer = argparse.Namespace(**{**vars(args), "requests": args.requests * SAME_FILE_REQUESTS})
    try:
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        names = list(servers)
        for round_ in range(rounds):  # each round starts with the next server: no one always goes first
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                proc, url = servers[name]
                runs[name].append(_measure(proc, url, "none" if name == "llama-server" else ADMIN, longer))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)
    return {"same_file": {name: _median_of(measured) for name, measured in runs.items()}}


def _median_of(runs: list[dict]) -> dict:
    """Field by field, the median of several measurements (nested dicts of numbers)."""
    merged = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(first, dict):
            merged[key] = _median_of(values)
        elif all(isinstance(v, (int, float)) for v in values):
            merged[key] = statistics.median(values)
        else:
            merged[key] = first
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="measurements per variant; figures are medians")
    args = parser.parse_args()
    from shipyard.demo.build import default_demo_path
    from shipyard.optimize.verify import held_out_text, perplexity_gguf, perplexity_hf

    model = default_demo_path()
    if not (model / "config.json").exists():
        raise SystemExit(f"the demo model is not built ({model}); run `make demo-model`")
    text = held_out_text()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    args.no_stop = {str(tokenizer.convert_tokens_to_ids(t)): -100 for t in ("<|endoftext|>", "<|im_end|>")}
    from shipyard.optimize.measure import Candidate, build, engine_settings, select

    names = ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_0", "gptq", "awq")
    ggufs = {name: build(model, Candidate("llamacpp", name)) for name in names}
    engine = {"engine": "transformers", "model": str(model), "num_threads": 1, "max_num_seqs": 16}
    variants = {
        "fp32": ({**engine}, lambda: perplexity_hf(model, text)),
        "int8": ({**engine, "quantization": "int8"}, lambda: perplexity_hf(model, text, "int8")),
        **{name: ({"engine": "llamacpp", "model": str(path), "tokenizer": str(model), "num_threads": 1,
                   "max_num_seqs": 16, "max_model_len": 1024},
                  lambda path=path: perplexity_gguf(path, text))
           for name, path in ggufs.items()},
    }
    variants["gguf-q8_0 fa-off"] = ({**variants["gguf-q8_0"][0], "flash_attn": "off"}, variants["gguf-q8_0"][1])
    selection = select(model, "throughput", 2.0)  # what `shipyard deploy` (and make serve) chose on this machine
    chosen = selection.chosen.candidate
    artifact = Path(selection.chosen.artifact) if selection.chosen.artifact else None
    variants["deploy choice"] = (engine_settings(chosen, model, artifact, 1024),
                                 lambda: perplexity_gguf(artifact, text) if artifact else perplexity_hf(model, text))
    results: dict = {"model": model.name, "requests": args.requests, "max_tokens": args.max_tokens,
                     "repeat": args.repeat, "date": time.strftime("%Y-%m-%d"), "deploy_choice": chosen.label,
                     "deploy_measurements_cached": selection.cached, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="shipyard-optimization-") as tmp:
        workdir = Path(tmp)
        for name, (deployment, quality) in variants.items():
            proc, url = serve_deployment(deployment, workdir, name.replace(" ", "-"))
            try:
                figures = _median_of([_measure(proc, url, ADMIN, args) for _ in range(args.repeat)])
            finally:
                proc.terminate()
                proc.wait(60)
            figures["perplexity"] = round(quality().perplexity, 4)
            results["variants"][name] = figures
        results["same_file_rounds"] = max(args.repeat, 5)
        results.update(_side_by_side(variants, ggufs["gguf-q8_0"], workdir, args, results["same_file_rounds"]))
    v = results["variants"]
    reference = v["fp32"]["perplexity"]
    loss = {name: (f["perplexity"] - reference) / reference * 100 for name, f in v.items()}
    within = [name for name in v if loss[name] <= 2.0]
    best = max(within, key=lambda name: v[name]["c8"]["tokens_per_s"])
    results["best_within_bound"] = best
    results["deploy_choice_vs_best_ratio"] = v["deploy choice"]["c8"]["tokens_per_s"] / v[best]["c8"]["tokens_per_s"]
    # Shipyard's fastest path on the very same q8_0 file at each concurrency (flash attention as measured
    # best), against llama-server, all measured round by round in the same minutes
    same = results["same_file"]
    for c in ("c1", "c8"):
        fastest = max(SAME_FILE, key=lambda name: same[name][c]["tokens_per_s"])
        results[f"llama_server_ratio_{c}"] = same[fastest][c]["tokens_per_s"] / same["llama-server"][c]["tokens_per_s"]
        results[f"llama_server_shipyard_path_{c}"] = fastest
    results["llama_server_q8_0"] = same["llama-server"]
    results["best_vs_llama_server_c8"] = v[best]["c8"]["tokens_per_s"] / results["llama_server_q8_0"]["c8"]["tokens_per_s"]
    results["gptq_perplexity_loss_pct"] = loss["gptq"]
    results["awq_perplexity_loss_pct"] = loss["awq"]
    results["q4_0_rtn_perplexity_loss_pct"] = loss["gguf-q4_0"]
    results["int8_decode_speedup"] = v["int8"]["c1"]["tokens_per_s"] / v["fp32"]["c1"]["tokens_per_s"]
    results["int8_perplexity_loss_pct"] = loss["int8"]
    print(f"\n{'':<22}{'tok/s c1':>10}{'tok/s c8':>10}{'TTFT c1 ms':>12}{'RSS MiB':>9}{'perplexity':>12}{'loss %':>8}")
    rows = {**v, "llama-server q8_0": {**results["llama_server_q8_0"], "perplexity": v["gguf-q8_0"]["perplexity"]}}
    for name, f in rows.items():
        print(f"{name:<22}{f['c1']['tokens_per_s']:>10.1f}{f['c8']['tokens_per_s']:>10.1f}"
              f"{f['c1']['ttft_ms_p50'] or 0:>12.1f}{f['rss_mib']:>9.0f}{f['perplexity']:>12.3f}"
              f"{(f['perplexity'] - reference) / reference * 100:>8.3f}")
    print(f"\nside by side, {results['same_file_rounds']} rounds in turn (medians):")
    for name, f in results["same_file"].items():
        print(f"{name:<22}{f['c1']['tokens_per_s']:>10.1f}{f['c8']['tokens_per_s']:>10.1f}"
              f"{f['c1']['ttft_ms_p50'] or 0:>12.1f}")
    print(f"deploy choice {chosen.label}: {results['deploy_choice_vs_best_ratio']:.2f}x the best within the bound "
          f"({best}); Shipyard's q8_0 / llama-server: {results['llama_server_ratio_c1']:.2f}x at c=1, "
          f"{results['llama_server_ratio_c8']:.2f}x at c=8; GPTQ loss {results['gptq_perplexity_loss_pct']:.3f}%, "
          f"AWQ loss {results['awq_perplexity_loss_pct']:.3f}%")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "optimization.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'optimization.json'}")


if __name__ == "__main__":
    main()
