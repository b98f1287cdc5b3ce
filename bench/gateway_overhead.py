"""Gateway overhead end to end: a zero-latency OpenAI upstream called directly, through Shipyard's
full path (auth + limits + usage + metrics + routing), and through LiteLLM's proxy, in one run.

    python bench/gateway_overhead.py [--duration 8] [--concurrency 50]

Everything runs inside a loopback-only network namespace (LiteLLM phones home otherwise): the
upstream, both gateways and the aiohttp load generator. Each gateway is measured with 1 worker
process, then with 2 (Shipyard's 2 workers share limits through a Redis server started here, as
`--workers` requires; with 1 it runs its default embedded setup). Closed-loop load at
`--concurrency` gives requests/s, streamed and not; an open-loop run at 100 requests/s gives the
latency a gateway adds at a modest rate. Added latency = the gateway's percentile minus the
direct one's. Prints a table; writes bench/results/gateway_overhead.json (top level: 1 worker,
non-streamed; `stream`; `workers_2` with its own `stream`; `at_100_rps`). LiteLLM is installed
once into ~/.cache/shipyard/bench/litellm-venv (`litellm[proxy]` from PyPI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LITELLM_VENV = Path.home() / ".cache" / "shipyard" / "bench" / "litellm-venv"
ADMIN = "sy-overhead-bench-admin-0123456789"
MASTER = "sk-overhead-bench-master-0123456789"
REPLY = {"id": "chatcmpl-0", "object": "chat.completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_upstream(port: int) -> None:
    """The zero-latency upstream: a fixed answer, streamed or not, at once."""
    from aiohttp import web

    body = json.dumps(REPLY).encode()
    chunk = {**REPLY, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]}
    last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {**chunk, "choices": [], "usage": REPLY["usage"]}
    sse = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in (chunk, last, usage)) + b"data: [DONE]\n\n"

    async def chat(request):
        payload = await request.json()
        if payload.get("stream"):
            return web.Response(body=sse, content_type="text/event-stream")
        return web.Response(body=body, content_type="application/json")

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _wait(url: str, headers: dict | None = None, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def start_upstream() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])
    _wait(f"http://127.0.0.1:{port}/v1/models")
    return proc, f"http://127.0.0.1:{port}"


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise TimeoutError("redis-server")


def start_shipyard(upstream: str, workdir: Path, workers: int = 1, redis_url: str | None = None
                   ) -> tuple[subprocess.Popen, str]:
    import yaml

    port = free_port()
    config = {"deployments": {"m": {"engine": "openai_http", "url": upstream, "flavor": "openai"}},
              "server": {"log_level": "warning", "workers": workers}}
    if redis_url:
        config["gateway"] = {"redis_url": redis_url}
    path = workdir / f"shipyard-{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SHIPYARD_ADMIN_KEY": ADMIN, "SHIPYARD_DATA_DIR": str(workdir / f"data-{workers}")}
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--config", str(path), "--port", str(port)],
                            env=env, stdout=open(workdir / f"shipyard-{workers}.log", "w"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{port}/ready")
    return proc, f"http://127.0.0.1:{port}"


def install_litellm() -> None:
    """Once, before entering the namespace (PyPI is outside it)."""
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)


def start_litellm(upstream: str, workdir: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    import yaml

    binary = LITELLM_VENV / "bin" / "litellm"
    port = free_port()
    config = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": f"{upstream}/v1",
                                                                   "api_key": "unused"}}],
              "general_settings": {"master_key": MASTER}, "litellm_settings": {"set_verbose": False}}
    path = workdir / f"litellm-{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = subprocess.Popen([str(binary), "--config", str(path), "--port", str(port), "--num_workers", str(workers)],
                            env=env, stdout=open(workdir / f"litellm-{workers}.log", "w"), stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    return proc, f"http://127.0.0.1:{port}"


async def closed_loop(url: str, key: str, stream: bool, concurrency: int, duration: float) -> dict:
    import aiohttp

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": stream}
    headers = {"authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + 1.0  # a one-second warm-up first

    async def user(session):
        nonlocal errors
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
            latencies.append((time.perf_counter() - start) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(user(session) for _ in range(min(concurrency, 5))))
        stop_at = time.monotonic() + duration
        latencies.clear()
        started = time.monotonic()
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"rps": len(latencies) / elapsed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "errors": errors, "requests": len(latencies)}


async def open_loop(url: str, key: str, rate: float, duration: float) -> dict:
    import aiohttp

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    headers = {"authorization": f"Bearer {key}"}
    latencies: list[float] = []

    async def one(session):
        start = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            await response.read()
        latencies.append((time.perf_counter() - start) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(20):
            await one(session)
        latencies.clear()
        tasks, start = [], time.monotonic()
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(session)))
        await asyncio.gather(*tasks)
    return {"p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _measure(targets: dict, args) -> dict:
    """Closed-loop figures, non-streamed at the top level and streamed under `stream`."""
    results: dict = {}
    for stream in (False, True):
        section = {name: asyncio.run(closed_loop(url, key, stream, args.concurrency, args.duration))
                   for name, (url, key) in targets.items()}
        _added(section)
        if stream:
            results["stream"] = section
        else:
            results.update(section)
    return results


def _added(section: dict) -> None:
    for figures in section.values():
        figures["p50_added_ms"] = figures["p50_ms"] - section["direct"]["p50_ms"]
        figures["p99_added_ms"] = figures["p99_ms"] - section["direct"]["p99_ms"]


def _gateways(upstream: str, workdir: Path, workers: int, redis_url: str | None, procs: list) -> dict:
    targets = {"direct": (upstream, "unused")}
    proc, url = start_shipyard(upstream, workdir, workers, redis_url)
    procs.append(proc)
    targets["shipyard"] = (url, ADMIN)
    try:
        proc, url = start_litellm(upstream, workdir, workers)
        procs.append(proc)
        targets["litellm"] = (url, MASTER)
    except Exception as exc:  # reported, and the rest still measured
        print(f"LiteLLM ({workers} workers) could not start: {exc}", file=sys.stderr)
    return targets


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="shipyard-overhead-") as tmp:
        workdir = Path(tmp)
        base: list[subprocess.Popen] = []
        try:
            upstream_proc, upstream = start_upstream()
            base.append(upstream_proc)
            results: dict = {"concurrency": args.concurrency, "duration_s": args.duration, "workers": 1}
            procs: list[subprocess.Popen] = []
            try:  # one worker each: the top-level figures, and the latency at 100 requests/s
                targets = _gateways(upstream, workdir, 1, None, procs)
                results.update(_measure(targets, args))
                at_100 = {name: asyncio.run(open_loop(url, key, 100, args.duration)) for name, (url, key) in targets.items()}
                _added(at_100)
                results["at_100_rps"] = at_100
            finally:
                _stop(procs)
            redis_proc, redis_url = start_redis(workdir)
            base.append(redis_proc)
            procs = []
            try:  # then two each
                results["workers_2"] = _measure(_gateways(upstream, workdir, 2, redis_url, procs), args)
            finally:
                _stop(procs)
            return results
        finally:
            _stop(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if not args.in_netns and shutil.which("unshare"):
        try:
            install_litellm()
        except subprocess.CalledProcessError as exc:
            print(f"could not install LiteLLM ({exc}); measuring without it", file=sys.stderr)
        # Everything in a loopback-only network namespace: LiteLLM cannot phone home from there.
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, __file__,
                   "--in-netns", "--duration", str(args.duration), "--concurrency", str(args.concurrency)]
        raise SystemExit(subprocess.call(command))
    results = run(args)
    print(f"\n{'':<18}{'rps':>10}{'p50 added ms':>14}{'p99 added ms':>14}   (concurrency {args.concurrency})")
    for workers, figures in ((1, results), (2, results["workers_2"])):
        for label, section in (("", figures), ("stream ", figures["stream"])):
            for name in ("direct", "shipyard", "litellm"):
                if name in section:
                    f = section[name]
                    print(f"{f'{workers}w {label}{name}':<18}{f['rps']:>10.0f}{f['p50_added_ms']:>14.2f}"
                          f"{f['p99_added_ms']:>14.2f}")
        if "litellm" in figures:
            print(f"{workers} worker(s): Shipyard / LiteLLM requests/s {figures['shipyard']['rps'] / figures['litellm']['rps']:.1f}x"
                  f" (streamed {figures['stream']['shipyard']['rps'] / figures['stream']['litellm']['rps']:.1f}x)")
    print("\nat 100 requests/s (1 worker): " + ", ".join(f"{n} p50 +{f['p50_added_ms']:.2f} ms" for n, f in
                                                        results["at_100_rps"].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'gateway_overhead.json'}")


if __name__ == "__main__":
    main()
