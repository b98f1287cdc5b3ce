"""DELETE /admin/cache: forget cached answers (exact and semantic) by deployment, tenant or both.

A tenant-admin forgets its own tenant's answers only; an admin may name any tenant, a whole
deployment (every tenant), or both. Invalidation is immediate in every gateway process that
shares the Redis cache (generation numbers, see cache/exact.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from shipyard.api.authorization import principal_of, services_of
from shipyard.api.errors import APIError
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.cache.engine import CachingEngine
from shipyard.cache.exact import CacheUnavailable
from shipyard.gateway.roles import tenant_scope

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin", tags=["admin"])


@router.delete("/cache")
async def invalidate_cache(request: Request, deployment: str | None = None, tenant_id: str | None = None):
    tenant_id = tenant_scope(principal_of(request), tenant_id, "clear the cached answers")
    if deployment is None and tenant_id is None:
        raise APIError(400, "Name a deployment, a tenant_id, or both.", param="deployment", code="missing_scope")
    router_ = services_of(request).router
    names = [deployment] if deployment is not None else list(router_.engines())
    if deployment is not None:
        router_.engine(deployment)  # 404 for an unknown model
    cleared, pending = [], []
    for name in names:
        layer = router_.front.get(name)
        if isinstance(layer, CachingEngine):
            try:
                await layer.invalidate(tenant_id)
                cleared.append(name)
            except CacheUnavailable:
                pending.append(name)
    if pending:
        retry_after = str(request.app.state.config.server.retry_after_s)
        raise APIError(503, f"The cache's store (Redis) did not answer for {', '.join(pending)[:200]}. The "
                       "invalidation is kept and retried by this server until it lands; meanwhile it serves no "
                       "cached answer of that scope.", code="cache_unavailable", headers={"Retry-After": retry_after})
    return {"object": "cache.invalidation", "deployments": cleared, "tenant_id": tenant_id}
