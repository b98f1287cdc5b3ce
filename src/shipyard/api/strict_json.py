"""Request bodies decoded as strict JSON: no NaN, no Infinity, no number too large for a float.

Python's `json` takes `NaN`, `Infinity` and `1e999` (which becomes infinity) without a word, and
such a value passes every `ge`/`le` bound that forgets `allow_inf_nan`. Stored, it then breaks
every later read (a JSON response cannot carry it). Refusing it while decoding covers every route
at once: FastAPI turns the decode error into a 400 like any malformed body.
"""

from __future__ import annotations

import json
import math

from fastapi import Request
from fastapi.routing import APIRoute


class NonFiniteNumber(json.JSONDecodeError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is out of range (a finite float is required)", text, 0)
    return value


def _refuse_constant(name: str):
    raise NonFiniteNumber(f"{name} is not a JSON number (a finite float is required)", name, 0)


def loads(body: bytes | str):
    """`json.loads`, refusing NaN, ±Infinity and numbers that overflow a float."""
    return json.loads(body, parse_float=_finite_float, parse_constant=_refuse_constant)


class StrictJSONRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """Every API router's route class: its handler sees a `StrictJSONRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict
