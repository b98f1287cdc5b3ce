"""How well does each hallucination signal find hallucinated answers? On a labelled set, the
AUROC of each signal (0.5: no better than chance; 1: every hallucinated answer is flagged before
every good one).

A labelled row names a request already served and scored (`request_id`), or carries a prompt
(`messages` or `prompt`, optionally `reference_context`) that is sent now, with a consistency
check asked for; either way with `hallucinated`: true or false. The signals are read back from
the score store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from shipyard.evaluation.run import DatasetError, read_rows

# signal → True when a *lower* value is more suspicious
SIGNALS = {"mean_logprob": True, "min_logprob": True, "mean_entropy": False, "consistency_unigram": True,
           "consistency_cosine": True, "faithfulness": True}


def auroc(positives: list[float], negatives: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half (Mann–Whitney U / n₁n₀)."""
    from scipy.stats import mannwhitneyu

    if not positives or not negatives:
        return None
    return float(mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives)))


@dataclass
class Labelled:
    hallucinated: bool
    request_id: str | None = None
    messages: list | None = None
    reference_context: str | None = None


def load_labelled(path: Path) -> list[Labelled]:
    rows = []
    for number, item, messages in read_rows(path):
        if not isinstance(item.get("hallucinated"), bool):
            raise DatasetError(f"{path}:{number}: needs 'hallucinated': true or false")
        if item.get("request_id") is None and not messages:
            raise DatasetError(f"{path}:{number}: needs 'request_id', or 'messages' / 'prompt'")
        rows.append(Labelled(item["hallucinated"], item.get("request_id"), messages, item.get("reference_context")))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


async def _serve(client: httpx.AsyncClient, deployment: str, row: Labelled, max_tokens: int) -> str:
    body = {"model": deployment, "messages": row.messages, "max_tokens": max_tokens, "temperature": 0.0}
    if row.reference_context:
        body["reference_context"] = row.reference_context
    response = await client.post("/v1/chat/completions", json=body, headers={"x-shipyard-evaluate": "consistency"})
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.headers["x-request-id"]


async def _signals(client: httpx.AsyncClient, request_id: str, wait_s: float) -> dict[str, float]:
    """The request's signal scores; waits (up to wait_s) for the background ones to land."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        response = await client.get("/admin/scores", params={"request_id": request_id, "limit": 100})
        response.raise_for_status()
        found = {row["name"]: row["value"] for row in response.json()["data"] if row["name"] in SIGNALS}
        if "consistency_cosine" in found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.25)


async def evaluate_signals(client: httpx.AsyncClient, rows: list[Labelled], deployment: str | None,
                           max_tokens: int = 128, wait_s: float = 60.0) -> dict:
    values: dict[str, dict[bool, list[float]]] = {name: {True: [], False: []} for name in SIGNALS}
    errors = 0
    for row in rows:
        try:
            request_id = row.request_id or await _serve(client, deployment, row, max_tokens)
            found = await _signals(client, request_id, wait_s if row.request_id is None else 0.0)
        except (RuntimeError, httpx.HTTPError):
            errors += 1
            continue
        for name, value in found.items():
            values[name][row.hallucinated].append(float(value))
    report = {}
    for name, lower_is_suspicious in SIGNALS.items():
        positives, negatives = values[name][True], values[name][False]
        if lower_is_suspicious:  # AUROC of "suspicion" = the negated signal
            positives, negatives = [-v for v in positives], [-v for v in negatives]
        report[name] = {"auroc": auroc(positives, negatives), "hallucinated": len(values[name][True]),
                        "faithful": len(values[name][False])}
    return {"rows": len(rows), "errors": errors, "signals": report}
