"""POST /v1/embeddings, as OpenAI defines it: a string, a list of strings, token ids or lists of
token ids in; one vector per input out, as floats or as base64 of little-endian float32 (what
the official client asks for by default); `dimensions` where the model can be shortened."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from shipyard.api.authorization import caller_of, services_of
from shipyard.api.protocol import NullsAreDefaults
from shipyard.api.streaming import ClientDisconnected, run_until_disconnect
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.inference.embedding import embed

router = APIRouter(route_class=StrictJSONRoute)

MAX_INPUTS = 2048  # OpenAI's own limit per call
_CLIENT_CLOSED = 499


class EmbeddingRequest(NullsAreDefaults):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65536)
    user: str | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _inputs(cls, value):
        rows = [value] if isinstance(value, str) else value
        if not rows:
            raise ValueError("input must not be empty")
        if len(rows) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per call, got {len(rows)}")
        if isinstance(rows[0], int):  # one token-id input
            return [rows]
        if any(isinstance(row, str) and not row for row in rows):
            raise ValueError("input strings must not be empty")
        if any(isinstance(row, list) and not row for row in rows):
            raise ValueError("token-id inputs must not be empty")
        return rows


def _encode(vector, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request):
    record = request.state.record
    record.model, record.user, record.stream = body.model, body.user, False  # an inference call, as chat's
    try:
        vectors, tokens = await run_until_disconnect(
            request.receive, embed(services_of(request), caller_of(request), record, body.input, body.dimensions))
    except ClientDisconnected:
        return Response(status_code=_CLIENT_CLOSED)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
