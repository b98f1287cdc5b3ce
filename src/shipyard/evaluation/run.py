"""An eval run: every row of a JSONL dataset sent to a deployment through the server's own API
(so it is a real, metered request), its answer scored by each metric, the scores written to the
score store as `eval` scores named `eval.<metric>`, and a report.

A row is {"messages": [...]} or {"prompt": "..."}, with "expected" (a string, or a list of
acceptable answers), and optionally "id" and "max_tokens".
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shipyard.evaluation.metrics import METRICS, score


class DatasetError(ValueError):
    pass


@dataclass
class Row:
    id: str
    messages: list[dict]
    expected: list[str]
    max_tokens: int | None = None


@dataclass
class RowResult:
    id: str
    request_id: str | None
    answer: str | None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def read_rows(path: Path):
    """(line number, object, messages or None) for each non-empty line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise DatasetError(f"{path}:{number}: each line must be a JSON object")
            messages = item.get("messages") or ([{"role": "user", "content": item["prompt"]}]
                                                if isinstance(item.get("prompt"), str) else None)
            yield number, item, messages if isinstance(messages, list) and messages else None


def load_dataset(path: Path, limit: int | None = None) -> list[Row]:
    rows = []
    for number, item, messages in read_rows(path):
        if messages is None:
            raise DatasetError(f"{path}:{number}: needs 'messages' (a list) or 'prompt' (a string)")
        expected = item.get("expected", [])
        expected = [expected] if isinstance(expected, str) else expected
        if not isinstance(expected, list) or not all(isinstance(e, str) for e in expected):
            raise DatasetError(f"{path}:{number}: 'expected' must be a string or a list of strings")
        rows.append(Row(str(item.get("id", number)), messages, expected, item.get("max_tokens")))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


RETRIED = (429, 503)  # refused for now (a limit, a full queue, a cold start): asked again after Retry-After
MAX_WAIT_S = 60.0


async def _ask(client: httpx.AsyncClient, deployment: str, row: Row, max_tokens: int, headers: dict,
               attempts: int = 6) -> tuple[str, str]:
    body = {"model": deployment, "messages": row.messages, "max_tokens": row.max_tokens or max_tokens,
            "temperature": 0.0}
    for attempt in range(attempts):
        response = await client.post("/v1/chat/completions", headers=headers, json=body)
        if response.status_code not in RETRIED or attempt == attempts - 1:
            break
        await asyncio.sleep(retry_after(response, attempt))
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except Exception:
            message = response.text[:200]
        raise RuntimeError(f"HTTP {response.status_code}: {message}")
    return response.headers.get("x-request-id", ""), response.json()["choices"][0]["message"]["content"] or ""


def retry_after(response: httpx.Response, attempt: int) -> float:
    """The server's Retry-After (seconds), else an exponential backoff; at most a minute."""
    try:
        return min(MAX_WAIT_S, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):
        return min(MAX_WAIT_S, 0.5 * 2 ** attempt)


async def post_scores(client: httpx.AsyncClient, scores: list[dict], attempts: int = 20) -> None:
    """The usage record of a request is written a moment after its answer: retry a 404 briefly."""
    for i in range(0, len(scores), 100):
        batch = scores[i:i + 100]
        for attempt in range(attempts):
            response = await client.post("/admin/scores", json=batch)
            if response.status_code == 201:
                break
            if response.status_code != 404 or attempt == attempts - 1:
                raise RuntimeError(f"writing scores failed: HTTP {response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.25)


async def run_eval(client: httpx.AsyncClient, deployment: str, rows: list[Row], metrics: list[str],
                   dataset_name: str, concurrency: int = 4, max_tokens: int = 256,
                   extra_headers: dict | None = None) -> dict:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: one of {', '.join(METRICS)}")
    results: list[RowResult] = []
    queue = list(rows)

    async def worker() -> None:
        while queue:
            row = queue.pop(0)
            try:
                request_id, answer = await _ask(client, deployment, row, max_tokens, extra_headers or {})
            except (RuntimeError, httpx.HTTPError) as exc:
                results.append(RowResult(row.id, None, None, error=str(exc)))
                continue
            results.append(RowResult(row.id, request_id, answer,
                                     {m: score(m, answer, row.expected) for m in metrics}))

    started = time.time()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    scored = [r for r in results if r.error is None]
    await post_scores(client, [{"request_id": r.request_id, "name": f"eval.{m}", "value": v, "source": "eval",
                                "comment": f"{dataset_name}#{r.id}"} for r in scored for m, v in r.scores.items()])
    summary = {m: {"mean": statistics.fmean(r.scores[m] for r in scored) if scored else None, "n": len(scored)}
               for m in metrics}
    results.sort(key=lambda r: r.id)
    return {"deployment": deployment, "dataset": dataset_name, "started_at": started, "seconds": time.time() - started,
            "rows": len(rows), "errors": len(rows) - len(scored), "metrics": summary,
            "results": [vars(r) for r in results]}
