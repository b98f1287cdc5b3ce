"""An embeddings call through the same gateway as chat: the model resolved, the inputs tokenized
once (off the event loop), the key's limits and the deployment's admission taken for their
tokens, the vectors made, and the call settled and metered (prompt tokens, no completion)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from shipyard.gateway.auth import Caller
from shipyard.gateway.service import monotonic_ms
from shipyard.inference.pipeline import ShuttingDown, take_ticket
from shipyard.inference.record import RequestRecord
from shipyard.inference.services import Services

_CLIENT_CLOSED = 499


async def embed(services: Services, caller: Caller, record: RequestRecord, inputs: list, dimensions: int | None
                ) -> tuple[np.ndarray, int]:
    """(unit vectors, prompt tokens) for the inputs, or a domain error."""
    if services.drain.draining:
        raise ShuttingDown("The server is shutting down; retry on another replica.")
    record.deployment = record.model
    engine = services.router.embedder(record.model)
    engine.check_dimensions(dimensions)
    ids = await engine.tokenize(inputs)
    tokens = sum(len(row) for row in ids)
    record.prompt_tokens = tokens
    usage_id = record.usage_id
    _, ticket = await take_ticket(services, caller, record, usage_id, tokens, 0, 1, 1)
    started = time.monotonic()
    status = 200
    try:
        vectors = await engine.embed(ids, dimensions)
    except asyncio.CancelledError:
        status = _CLIENT_CLOSED
        raise
    except BaseException as exc:
        status = services.status_of(exc)
        raise
    finally:
        compute_s = time.monotonic() - started
        latency_ms = monotonic_ms(record.arrival)
        await services.gateway.finish(ticket, usage_id, status, tokens, 0, 0, latency_ms, None, compute_s=compute_s)
        services.metrics.observe_latency(record.model, "e2e", latency_ms / 1000)
        if status == 200:
            services.metrics.count_tokens(record.model, "prompt", tokens)
    return vectors, tokens
