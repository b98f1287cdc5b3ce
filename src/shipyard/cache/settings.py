"""The `cache:` section: the exact cache, the semantic cache, and a Redis of the cache's own."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shipyard.cache.exact import ExactCacheConfig
from shipyard.cache.semantic import SemanticCacheConfig


class CacheConfig(BaseModel):
    """The exact cache (on by default, for deterministic requests) and the semantic cache
    (opt-in per deployment). KV prefix sharing is set per embedded deployment."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    redis_url: str | None = Field(None, description="A Redis of the cache's own (env SHIPYARD_CACHE_REDIS_URL), "
                                  "which may evict; default: the gateway's, which must not")
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig()


