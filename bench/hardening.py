"""Before/after figures for items 1-13 of the hardening issue, side by side in one run.

    python bench/hardening.py [--baseline REF] [--only 1 2 ...]

Every scenario runs twice: against the server built from `--baseline` (default: the commit before
the hardening, checked out into a temporary git worktree) and against this checkout. Both use the
same virtual environment, a tiny model built in seconds, and real Redis and PostgreSQL servers.
Prints a table; writes bench/results/hardening.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))
ADMIN = "sy-hardening-bench-admin-0123456789"
MODEL = "tiny"
BASELINE = "5316288"  # main before the hardening issue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`shipyard serve` from a given source tree."""

    def __init__(self, source: Path, model: Path, workdir: Path, gateway: dict | None = None,
                 deployment: dict | None = None, store_url: str | None = None, server: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"deployments": {MODEL: {"model": str(model), "max_num_seqs": 32, "num_threads": 1,
                                          **(deployment or {})}},
                  "gateway": {"usage_flush_interval_s": 0.1, **(gateway or {})}}
        if store_url:
            config["store"] = {"url": store_url}
        if server:
            config["server"] = server
        path = workdir / f"config-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.data = workdir / f"data-{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(source / "src"), "HF_HUB_OFFLINE": "1", "SHIPYARD_ADMIN_KEY": ADMIN,
               "SHIPYARD_DATA_DIR": str(self.data), "SHIPYARD_KEY_PEPPER": "bench-pepper-0123456789"}
        self.proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--config", str(path),
                                      "--port", str(self.port)], stdout=open(self.log_path, "w"),
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=300)

    def tenant(self, name: str, **fields) -> str:
        return self.http.post("/admin/tenants", json={"name": name, **fields}).json()["id"]

    def key(self, tenant: str, **fields) -> dict:
        return self.http.post("/admin/keys", json={"tenant_id": tenant, **fields}).json()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def chat(content: str = "hi", max_tokens: int = 4) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


async def stream_text(session, url: str, body: dict, headers: dict, stop_after: int | None = None,
                      timeout: float = 20) -> tuple[str, int, bool, list]:
    """(text, token chunks, saw [DONE], error events)."""
    text, chunks, done, errors = "", 0, False, []
    async with session.post(url, json={**body, "stream": True}, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    errors.append(event["error"].get("code"))
                elif event.get("choices"):
                    piece = event["choices"][0].get("text") or ""
                    text += piece
                    chunks += 1 if piece else 0
                    if stop_after is not None and chunks >= stop_after:
                        break
    return text, chunks, done, errors


def timed_chat(url: str, key: str) -> float:
    start = time.perf_counter()
    httpx.post(f"{url}/v1/chat/completions", json=chat(max_tokens=1), timeout=60,
               headers={"authorization": f"Bearer {key}"})
    return (time.perf_counter() - start) * 1000


def victim_latency(server: Server, victim: str, attacker: str, attack: dict, delay: float) -> tuple[int, float, float]:
    """(the attack's status, the victim's chat latency idle and while the attack runs), in ms."""
    idle = statistics.median(timed_chat(server.url, victim) for _ in range(5))

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            pending = asyncio.ensure_future(client.post(f"{server.url}/v1/completions", json=attack,
                                                        headers={"authorization": f"Bearer {attacker}"}))
            await asyncio.sleep(delay)
            start = time.perf_counter()
            await client.post(f"{server.url}/v1/chat/completions", json=chat(max_tokens=1),
                              headers={"authorization": f"Bearer {victim}"})
            during = (time.perf_counter() - start) * 1000
            return (await pending).status_code, during

    status, during = asyncio.run(run())
    return status, round(idle, 1), round(during, 1)


# ---------------------------------------------------------------- the scenarios, one per item

def item1(ctx) -> dict:
    """Two streams with one x-request-id: pairs whose output was not each its own."""
    server = ctx.server()
    headers = {"authorization": f"Bearer {ADMIN}", "x-request-id": "shared-by-two-clients"}
    body_a = {"model": MODEL, "prompt": "def alpha(", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    body_b = {"model": MODEL, "prompt": "class Beta:", "max_tokens": 20, "temperature": 0, "ignore_eos": True}

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/v1/completions"
            solo_a = (await stream_text(session, url, body_a, {"authorization": f"Bearer {ADMIN}"}))[0]
            solo_b = (await stream_text(session, url, body_b, {"authorization": f"Bearer {ADMIN}"}))[0]
            bad = 0
            for _ in range(10):
                try:
                    (a, *_), (b, *_) = await asyncio.gather(stream_text(session, url, body_a, headers, timeout=5),
                                                            stream_text(session, url, body_b, headers, timeout=5))
                    bad += (a != solo_a) or (b != solo_b)
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    bad += 1  # a stream that hangs lost its tokens to the other
            return bad

    return {"corrupted_pairs_of_10": asyncio.run(run())}


def item2(ctx) -> dict:
    """A stream closed after 30 chunks: completion tokens billed."""
    server = ctx.server()
    key = server.key(server.tenant("early"), tpm=3000)

    async def run():
        async with aiohttp.ClientSession() as session:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "ignore_eos": True}
            return await stream_text(session, f"{server.url}/v1/completions", body,
                                     {"authorization": f"Bearer {key['key']}"}, stop_after=30)

    received = asyncio.run(run())[1]
    time.sleep(1.0)
    rows = server.http.get("/admin/usage", params={"key_id": key["id"]}).json()["data"]
    return {"tokens_received": received, "completion_tokens_billed": rows[0]["completion_tokens"] if rows else 0}


def item3(ctx) -> dict:
    """A socket opened before its key was revoked: requests still served afterwards (of 3)."""
    import websockets

    server = ctx.server()
    key = server.key(server.tenant("socket"))

    async def run() -> int:
        url = server.url.replace("http", "ws") + "/v1/chat/completions"
        served = 0
        async with websockets.connect(url, additional_headers={"authorization": f"Bearer {key['key']}"}) as ws:
            await ws.send(json.dumps(chat()))
            while await ws.recv() != "[DONE]":
                pass
            server.http.post(f"/admin/keys/{key['id']}/revoke")
            try:
                for _ in range(3):
                    await ws.send(json.dumps(chat()))
                    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    served += "error" not in first
                    while (await asyncio.wait_for(ws.recv(), 10)) != "[DONE]":
                        pass
            except websockets.ConnectionClosed:
                pass
        return served

    return {"served_after_revoke_of_3": asyncio.run(run())}


def item4(ctx) -> dict:
    """256 prompts under a 1-request/minute key: its status, and another tenant's chat latency."""
    server = ctx.server()
    attacker = server.key(server.tenant("attacker"), rpm=1)["key"]
    victim = server.key(server.tenant("victim"))["key"]
    status, idle, during = victim_latency(server, victim, attacker, {
        "model": MODEL, "prompt": ["a"] * 256, "max_tokens": 64, "ignore_eos": True}, delay=0.3)
    return {"attack_status": status, "victim_chat_ms_idle": idle, "victim_chat_ms_during": during}


def item5(ctx) -> dict:
    """A tenant-admin creating a tier-100 key."""
    server = ctx.server()
    tenant = server.tenant("tiers")
    tenant_admin = server.key(tenant, role="tenant-admin")["key"]
    response = httpx.post(f"{server.url}/admin/keys", json={"tier": 100},
                          headers={"authorization": f"Bearer {tenant_admin}"})
    return {"status": response.status_code}


WATCH_S = 90.0


def item6(ctx) -> dict:
    """Redis frozen 8 s while 2 requests hold a max_concurrent=2 key: seconds locked out after."""
    redis = ctx.redis()
    server = ctx.server(gateway={"redis_url": redis.url})
    key = server.key(server.tenant("freeze"), max_concurrent=2)["key"]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 300, "ignore_eos": True, "stream": True}

    async def hold(session, admitted: asyncio.Event, go: asyncio.Event):
        async with session.post(f"{server.url}/v1/completions", json=body,
                                headers={"authorization": f"Bearer {key}"}) as response:
            await response.content.readline()  # admitted: its slot is taken
            admitted.set()
            await go.wait()
            await response.read()  # finishes (and releases its slot) while Redis is frozen

    async def run() -> float:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            admitted, go = [asyncio.Event(), asyncio.Event()], asyncio.Event()
            holders = [asyncio.ensure_future(hold(session, event, go)) for event in admitted]
            for event in admitted:
                await event.wait()
            os.kill(redis.proc.pid, signal.SIGSTOP)
            go.set()
            await asyncio.gather(*holders, return_exceptions=True)
        await asyncio.sleep(8)
        os.kill(redis.proc.pid, signal.SIGCONT)
        thawed = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() - thawed < WATCH_S:
                response = await client.post(f"{server.url}/v1/completions", headers={"authorization": f"Bearer {key}"},
                                             json={"model": MODEL, "prompt": "x", "max_tokens": 1})
                if response.status_code == 200:
                    return time.monotonic() - thawed
                await asyncio.sleep(0.25)
        return None

    locked = asyncio.run(run())
    # measured, both sides: the seconds until the key worked again, or that it still did not after WATCH_S
    return {"locked_out_s_after_thaw": None if locked is None else round(locked, 2), "watched_s": WATCH_S,
            "unlocked_within_watch": locked is not None}


def item7(ctx) -> dict:
    """Redis mode, max_concurrent=1, 200 back-to-back requests: share refused."""
    redis = ctx.redis()
    server = ctx.server(gateway={"redis_url": redis.url})
    key = server.key(server.tenant("exact"), max_concurrent=1)["key"]
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        statuses = [client.post(f"{server.url}/v1/completions",
                                json={"model": MODEL, "prompt": "x", "max_tokens": 1}).status_code for _ in range(200)]
    return {"refused_pct": round(100 * statuses.count(429) / len(statuses), 1)}


def item8(ctx) -> dict:
    """PostgreSQL stopped for 6 s: a known key's requests and their statuses."""
    from services import PostgresServer

    postgres = PostgresServer().start()
    ctx.cleanups.append(postgres.stop)
    server = ctx.server(store_url=postgres.url)
    key = server.key(server.tenant("outage"))["key"]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    headers = {"authorization": f"Bearer {key}"}
    httpx.post(f"{server.url}/v1/completions", json=body, headers=headers)
    postgres.pause()
    statuses, end = [], time.monotonic() + 6
    with httpx.Client(headers=headers, timeout=10) as client:
        while time.monotonic() < end:
            try:
                statuses.append(client.post(f"{server.url}/v1/completions", json=body).status_code)
            except httpx.HTTPError:
                statuses.append(0)
    postgres.resume()
    return {"requests": len(statuses), "ok": statuses.count(200), "errors_5xx_or_reset": len(statuses) - statuses.count(200),
            "tracebacks_in_log": server.log().count("Traceback")}


def item9(ctx) -> dict:
    """Four 15 MB WebSocket frames: server memory growth and /health latency."""
    import websockets

    server = ctx.server()
    before = server.rss_mb()

    async def run():
        url = server.url.replace("http", "ws") + "/v1/chat/completions"
        frame = json.dumps(chat("x" * (15 * 1024 * 1024)))
        try:
            async with websockets.connect(url, additional_headers={"authorization": f"Bearer {ADMIN}"},
                                          max_size=None) as ws:
                for _ in range(4):
                    await ws.send(frame)
                await asyncio.wait_for(ws.recv(), 5)
        except (websockets.ConnectionClosed, asyncio.TimeoutError, OSError):
            pass

    asyncio.run(run())
    start = time.perf_counter()
    httpx.get(f"{server.url}/health", timeout=120)
    health_ms = (time.perf_counter() - start) * 1000
    return {"rss_growth_mb": round(server.rss_mb() - before), "health_ms_after": round(health_ms, 1)}


def item10(ctx) -> dict:
    """300 unauthenticated clients send 1.9 MB of a 2 MB body and stall: memory held 5 s later."""
    server = ctx.server()
    before = server.rss_mb()
    socks = []
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 2000000\r\n\r\n")
    payload = b"{" + b" " * (1_900_000 - 1)
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setblocking(False)
        try:
            sock.send(head)
        except BlockingIOError:
            pass
        socks.append([sock, memoryview(payload)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(len(view) for _, view in socks):
        for entry in socks:
            sock, view = entry
            if len(view):
                try:
                    sent = sock.send(view[:262144])
                    entry[1] = view[sent:]
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    if not isinstance(sys.exc_info()[1], BlockingIOError):
                        entry[1] = view[:0]
    time.sleep(5)
    held = server.rss_mb() - before
    for sock, _ in socks:
        sock.close()
    return {"rss_held_mb": round(held)}


def item11(ctx) -> dict:
    """A 1.9 MB prompt sent by one tenant: another tenant's chat latency meanwhile."""
    server = ctx.server()
    victim = server.key(server.tenant("quiet"))["key"]
    status, idle, during = victim_latency(server, victim, ADMIN, {
        "model": MODEL, "prompt": "word " * 380_000, "max_tokens": 1}, delay=0.05)
    return {"big_prompt_status": status, "victim_chat_ms_idle": idle, "victim_chat_ms_during": during}


def item12(ctx) -> dict:
    """Stop strings crafted to stay a prefix of the output (so all of it is held and re-scanned):
    request time vs no stops, at 999 x 1 KB and at the new bound of 16 x 256."""
    server = ctx.server()
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100, "ignore_eos": True, "temperature": 0}
    output = server.http.post("/v1/completions", json=body).json()["choices"][0]["text"]

    def timed(extra: dict) -> tuple[float, int]:
        start = time.perf_counter()
        response = server.http.post("/v1/completions", json={**body, **extra})
        return (time.perf_counter() - start) * 1000, response.status_code

    def crafted(count: int, length: int) -> list[str]:
        # The last one never completes but stays a prefix of the output, so all of it is held back;
        # the ones before it never match, and a naive matcher re-tries every prefix of each.
        return ["~" * (length - 1) + chr(0x4E00 + i) for i in range(count - 1)] + [output[: length - 1] + chr(0x2603)]

    plain = statistics.median(timed({})[0] for _ in range(3))
    attack = [timed({"stop": crafted(999, 1024)})]
    bounded = statistics.median(timed({"stop": crafted(16, 256)})[0] for _ in range(3))
    attack_ms = statistics.median(a[0] for a in attack)
    return {"plain_ms": round(plain, 1), "crafted_999x1KB_ms": round(attack_ms, 1), "crafted_status": attack[0][1],
            "crafted_ratio": round(attack_ms / plain, 2), "crafted_16x256_ratio": round(bounded / plain, 2)}


def item13(ctx) -> dict:
    """SIGTERM with 30 long streams on 2 slots (past the 10 s grace): how the streams ended, and billing."""
    server = ctx.server(deployment={"max_num_seqs": 2})
    count = 30

    async def run():
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/v1/completions"
            body = {"model": MODEL, "prompt": "x", "max_tokens": 500, "ignore_eos": True}
            tasks = [asyncio.ensure_future(stream_text(session, url, body, {"authorization": f"Bearer {ADMIN}"},
                                                       timeout=90)) for _ in range(count)]
            await asyncio.sleep(1.0)
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run())
    server.proc.wait(90)
    ended = [r for r in results if not isinstance(r, BaseException)]
    rows = sqlite3.connect(server.data / "shipyard.db").execute(
        "SELECT status, completion_tokens FROM usage_records").fetchall()
    return {"streams": count, "ended_with_done": sum(1 for r in ended if r[2]),
            "cut_without_done": count - sum(1 for r in ended if r[2]),
            "with_error_event": sum(1 for r in ended if r[3]),
            "usage_rows": len(rows), "tokens_sent": sum(r[1] for r in ended),
            "tokens_billed": sum(r[1] for r in rows), "tracebacks_in_log": server.log().count("Traceback")}


ITEMS = {1: item1, 2: item2, 3: item3, 4: item4, 5: item5, 6: item6, 7: item7, 8: item8, 9: item9, 10: item10,
         11: item11, 12: item12, 13: item13}


class Context:
    def __init__(self, source: Path, model: Path, workdir: Path):
        self.source, self.model, self.workdir = source, model, workdir
        self.cleanups: list = []

    def server(self, **kwargs) -> Server:
        server = Server(self.source, self.model, self.workdir, **kwargs)
        self.cleanups.append(server.stop)
        return server

    def redis(self):
        from services import RedisServer

        redis = RedisServer().start()
        self.cleanups.append(redis.stop)
        return redis

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:
                pass
        self.cleanups.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="git ref of the 'before' server")
    parser.add_argument("--only", type=int, nargs="*", default=sorted(ITEMS))
    args = parser.parse_args()
    from shipyard.demo.build import TINY, build_model

    with tempfile.TemporaryDirectory(prefix="shipyard-hardening-") as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model", TINY, corpus_chars=200_000)
        before = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(before), args.baseline], cwd=ROOT,
                       check=True, capture_output=True)
        results: dict[str, dict] = {}
        try:
            for item in args.only:
                row = {}
                for label, source in (("before", before), ("after", ROOT)):
                    ctx = Context(source, model, tmp)
                    try:
                        row[label] = ITEMS[item](ctx)
                    except Exception as exc:  # a scenario the old server cannot even run is a figure too
                        row[label] = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    finally:
                        ctx.close()
                results[str(item)] = {"what": ITEMS[item].__doc__.strip(), **row}
                print(f"{item:>3}  {ITEMS[item].__doc__.strip()}\n     before: {row['before']}\n     after:  {row['after']}",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "hardening.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(results)
    out.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
