"""Closed-loop streaming users for the runtime tests: each thread sends one streamed chat request
after another and records True, or what went wrong."""

from __future__ import annotations

import threading

import httpx


def stream_user(base_url: str, model: str, results: list, stop: threading.Event) -> None:
    with httpx.Client(timeout=120) as http:
        while not stop.is_set():
            body = {"model": model, "max_tokens": 24, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "go"}]}
            try:
                with http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
                    lines = [line for line in response.iter_lines() if line.startswith("data: ")]
                ok = response.status_code == 200 and lines[-1] == "data: [DONE]" and '"completion_tokens":24' in lines[-2]
                results.append(True if ok else f"{response.status_code}: {lines[-2:]}")
            except (httpx.HTTPError, IndexError) as exc:
                results.append(repr(exc))


def start_users(base_url: str, model: str, users: int, results: list) -> tuple[threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    threads = [threading.Thread(target=stream_user, args=(base_url, model, results, stop), daemon=True)
               for _ in range(users)]
    for thread in threads:
        thread.start()
    return stop, threads


def stop_users(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for thread in threads:
        thread.join(120)
