"""Model name → deployment → engine.

One engine per deployment for now; replicas, balancing, retries and fallbacks will live behind
the same `resolve()` so that the api layer never learns about them.
"""

from __future__ import annotations

from shipyard.engines.base import Engine, ModelInfo


class ModelNotFoundError(LookupError):
    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")
        self.model = model


class Router:
    def __init__(self, engines: dict[str, Engine], front: dict[str, Engine] | None = None):
        self._engines = dict(engines)
        # Layers in front of a deployment's engine (the cache): requests go through them, while
        # the admin routes, metrics and lifecycle see the engine itself.
        self.front = dict(front or {})

    def resolve(self, model: str) -> Engine:
        """The engine that serves requests for `model` (behind its layers)."""
        engine = self.front.get(model) or self._engines.get(model)
        if engine is None:
            raise ModelNotFoundError(model)
        return engine

    def engine(self, model: str) -> Engine:
        """The deployment's own engine, without the layers in front."""
        engine = self._engines.get(model)
        if engine is None:
            raise ModelNotFoundError(model)
        return engine

    def models(self) -> list[ModelInfo]:
        return [engine.model for engine in self._engines.values()]

    def engines(self) -> dict[str, Engine]:
        return dict(self._engines)

    def ready(self) -> bool:
        return bool(self._engines) and all(e.ready() for e in self._engines.values())

    async def start(self) -> None:
        for engine in self._engines.values():
            await engine.start()

    async def stop(self) -> None:
        for engine in self._engines.values():
            await engine.stop()
