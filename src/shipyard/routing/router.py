"""Model name → deployment → engine.

One engine per deployment for now; replicas, balancing, retries and fallbacks will live behind
the same `resolve()` so that the api layer never learns about them.
"""

from __future__ import annotations

from shipyard.engines.base import Engine, ModelInfo
from shipyard.engines.embedding_engine import EmbeddingEngine
from shipyard.engines.errors import InvalidRequestError


class ModelNotFoundError(LookupError):
    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")
        self.model = model


class Router:
    def __init__(self, engines: dict[str, Engine], front: dict[str, Engine] | None = None,
                 embedders: dict[str, EmbeddingEngine] | None = None):
        self._engines = dict(engines)
        self._embedders = dict(embedders or {})  # embedding models: /v1/embeddings only
        # Layers in front of a deployment's engine (the cache): requests go through them, while
        # the admin routes, metrics and lifecycle see the engine itself.
        self.front = dict(front or {})

    def resolve(self, model: str) -> Engine:
        """The engine that serves requests for `model` (behind its layers)."""
        engine = self.front.get(model) or self._engines.get(model)
        if engine is None:
            if model in self._embedders:
                raise InvalidRequestError(f"'{model}' is an embedding model: call /v1/embeddings with it.", "model",
                                          "wrong_endpoint")
            raise ModelNotFoundError(model)
        return engine

    def embedder(self, model: str) -> EmbeddingEngine:
        """The embedding model called `model` (/v1/embeddings)."""
        engine = self._embedders.get(model)
        if engine is None:
            if model in self._engines:
                raise InvalidRequestError(f"'{model}' generates text and makes no embeddings; name an embedding "
                                          "model.", "model", "wrong_endpoint")
            raise ModelNotFoundError(model)
        return engine

    def embedders(self) -> dict[str, EmbeddingEngine]:
        return dict(self._embedders)

    def watched(self) -> dict:
        """Every model whose queue and load the metrics show: chat deployments and embedding models."""
        return {**self._engines, **self._embedders}

    def engine(self, model: str) -> Engine:
        """The deployment's own engine, without the layers in front."""
        engine = self._engines.get(model)
        if engine is None:
            raise ModelNotFoundError(model)
        return engine

    def models(self) -> list[ModelInfo]:
        return [engine.model for engine in (*self._engines.values(), *self._embedders.values())]

    def engines(self) -> dict[str, Engine]:
        return dict(self._engines)

    def ready(self) -> bool:
        every = self.watched()
        return bool(every) and all(e.ready() for e in every.values())

    async def start(self) -> None:
        for engine in self.watched().values():
            await engine.start()

    async def stop(self) -> None:
        for engine in self.watched().values():
            await engine.stop()
