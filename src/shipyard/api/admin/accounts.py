"""Admin API: tenants, keys (create, list, show, rotate, revoke), usage (JSON or CSV).

Permissions are checked centrally (api/authorization.py); handlers only narrow to the caller's
tenant. A resource of another tenant answers 404, as if it did not exist.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from shipyard.api.authorization import principal_of
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.gateway.auth import Principal
from shipyard.gateway.auth import rotation_due as is_rotation_due
from shipyard.gateway.errors import NotFound, PermissionDenied
from shipyard.gateway.keystore import KeySpec, aware
from shipyard.gateway.roles import ADMIN_GRANTED, Role, owns, tenant_scope
from shipyard.gateway.usage_report import usage_totals
from shipyard.store.models import ApiKey, Tenant

router = APIRouter(route_class=StrictJSONRoute, prefix="/admin", tags=["admin"])


INT32_MAX = 2**31 - 1  # the integer columns' range on PostgreSQL
MAX_EXPIRY_S = 10 * 366 * 86400  # ten years
MAX_GRACE_S = 30 * 86400
MAX_BUDGET_USD = 1e9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LimitFields(_Strict):
    rpm: int | None = Field(None, ge=1, le=INT32_MAX)
    tpm: int | None = Field(None, ge=1, le=INT32_MAX)
    max_concurrent: int | None = Field(None, ge=1, le=INT32_MAX)
    budget_usd: float | None = Field(None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    budget_period: Literal["day", "month"] | None = None


class TenantCreate(LimitFields):
    name: str = Field(min_length=1, max_length=200)
    max_tier: int = Field(0, ge=0, le=100, description="highest tier of the keys a tenant-admin may create")


class TenantUpdate(LimitFields):
    """Fields left out stay as they are; an explicit null removes a limit."""

    max_tier: int | None = Field(None, ge=0, le=100)


class KeyCreate(LimitFields):
    tenant_id: str | None = Field(None, max_length=64, description="default: the caller's tenant")
    role: Role = Role.DEVELOPER
    name: str = Field("", max_length=200)
    expires_in_s: float | None = Field(None, gt=0, le=MAX_EXPIRY_S, allow_inf_nan=False)
    allowed_models: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(None, max_length=100)
    tier: int = Field(0, ge=0, le=100)
    rotation_period_days: int | None = Field(None, ge=1, le=3660, description="policy: rotate at least this often")
    rotation_grace_s: float | None = Field(None, ge=0, le=MAX_GRACE_S, allow_inf_nan=False,
                                           description="policy: old secret's grace on rotation")


class KeyRotate(_Strict):
    grace_period_s: float | None = Field(None, ge=0, le=MAX_GRACE_S, allow_inf_nan=False,
                                         description="default: the key's policy, else 0")


def _keystore(request: Request):
    return request.app.state.services.keystore


def _own_tenant(principal: Principal, tenant_id: str) -> None:
    if not owns(principal, tenant_id):
        raise NotFound(f"No tenant '{tenant_id}'.")


def tenant_view(t: Tenant) -> dict:
    return {"id": t.id, "name": t.name, "rpm": t.rpm, "tpm": t.tpm, "max_concurrent": t.max_concurrent,
            "budget_usd": t.budget_usd, "budget_period": t.budget_period, "max_tier": t.max_tier,
            "created_at": aware(t.created_at)}


def key_view(k: ApiKey) -> dict:
    """Everything about a key except anything secret (no hash, no salt)."""
    return {
        "id": k.id, "tenant_id": k.tenant_id, "name": k.name, "role": k.role, "tier": k.tier,
        "allowed_models": k.allowed_models, "rpm": k.rpm, "tpm": k.tpm, "max_concurrent": k.max_concurrent,
        "budget_usd": k.budget_usd, "budget_period": k.budget_period,
        "rotation_period_days": k.rotation_period_days, "rotation_grace_s": k.rotation_grace_s,
        "rotation_due": is_rotation_due(k),
        "expires_at": aware(k.expires_at), "created_at": aware(k.created_at), "rotated_at": aware(k.rotated_at),
        "revoked_at": aware(k.revoked_at), "previous_secret_valid_until": aware(k.previous_valid_until),
    }


@router.get("/whoami")
async def whoami(request: Request):
    p = principal_of(request)
    return {"key_id": p.key_id, "tenant_id": p.tenant_id, "role": p.role, "tier": p.tier,
            "rotation_due": p.rotation_due}


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, request: Request):
    tenant = await _keystore(request).create_tenant(**body.model_dump())
    return tenant_view(tenant)


@router.patch("/tenants/{tenant_id}")
async def update_tenant(tenant_id: str, body: TenantUpdate, request: Request):
    fields = body.model_dump(exclude_unset=True)
    if "max_tier" in fields and fields["max_tier"] is None:
        fields["max_tier"] = 0
    return tenant_view(await _keystore(request).update_tenant(tenant_id, **fields))


@router.get("/tenants")
async def list_tenants(request: Request):
    only = tenant_scope(principal_of(request), None, "read the tenants")
    return {"object": "list", "data": [tenant_view(t) for t in await _keystore(request).list_tenants(only)]}


@router.get("/tenants/{tenant_id}")
async def get_tenant(tenant_id: str, request: Request):
    _own_tenant(principal_of(request), tenant_id)
    return tenant_view(await _keystore(request).get_tenant(tenant_id))


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request):
    p = principal_of(request)
    tenant_id = body.tenant_id or p.tenant_id
    _own_tenant(p, tenant_id)
    if p.role != Role.ADMIN.value:
        if body.role in ADMIN_GRANTED:
            raise PermissionDenied(f"Only an admin may create keys of the role '{body.role.value}'.")
        ceiling = (await _keystore(request).get_tenant(tenant_id)).max_tier
        if body.tier > ceiling:
            raise PermissionDenied(f"Tier {body.tier} is above this tenant's ceiling of {ceiling}; an admin "
                                   "can raise the ceiling.")
    expires = datetime.now(timezone.utc) + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    fields = body.model_dump(exclude={"tenant_id", "expires_in_s", "role"})
    row, plaintext = await _keystore(request).create_key(
        KeySpec(tenant_id=tenant_id, role=body.role.value, expires_at=expires, **fields))
    return {**key_view(row), "key": plaintext}  # the only time the secret is shown


@router.get("/keys")
async def list_keys(request: Request, tenant_id: str | None = None,
                    rotation_due: bool | None = Query(None, description="only keys past (or within) their policy")):
    p = principal_of(request)
    if tenant_id is not None:
        _own_tenant(p, tenant_id)
    tenant_id = tenant_scope(p, tenant_id, "list the keys")
    views = [key_view(k) for k in await _keystore(request).list_keys(tenant_id)]
    if rotation_due is not None:
        views = [v for v in views if v["rotation_due"] == rotation_due]
    return {"object": "list", "data": views}


async def _own_key(request: Request, key_id: str) -> ApiKey:
    row = await _keystore(request).get_key(key_id)
    p = principal_of(request)
    if not owns(p, row.tenant_id):
        raise NotFound(f"No API key '{key_id}'.")
    return row


@router.get("/keys/{key_id}")
async def get_key(key_id: str, request: Request):
    return key_view(await _own_key(request, key_id))


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, body: KeyRotate | None = None):
    row = await _own_key(request, key_id)
    if row.role == Role.ADMIN.value and principal_of(request).role != Role.ADMIN.value:
        raise PermissionDenied("Only an admin may rotate admin keys.")
    grace = body.grace_period_s if body is not None else None
    row, plaintext = await _keystore(request).rotate_key(key_id, grace)
    return {**key_view(row), "key": plaintext}


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request):
    row = await _own_key(request, key_id)
    if row.role == Role.ADMIN.value and principal_of(request).role != Role.ADMIN.value:
        raise PermissionDenied("Only an admin may revoke admin keys.")
    return key_view(await _keystore(request).revoke_key(key_id))


USAGE_COLUMNS = ("tenant_id", "key_id", "model", "user", "requests", "prompt_tokens", "completion_tokens",
                 "cached_tokens", "cache_hits", "cost_usd")


@router.get("/usage")
async def usage(
    request: Request,
    tenant_id: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    user: str | None = Query(None, max_length=256, description="the requests' `user` field"),
    start: datetime | None = Query(None, description="ISO 8601, inclusive"),
    end: datetime | None = Query(None, description="ISO 8601, exclusive"),
    group_by: list[Literal["tenant_id", "key_id", "model", "user"]] = Query(["tenant_id", "key_id", "model"]),
    format: Literal["json", "csv"] = "json",
):
    """Totals per group (default: tenant, key and model) over a time range."""
    p = principal_of(request)
    if tenant_id is not None:
        _own_tenant(p, tenant_id)
    tenant_id = tenant_scope(p, tenant_id, "read the usage")
    rows = await usage_totals(request.app.state.services.db, group_by, tenant_id, key_id, model, user, start, end)
    if format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[c for c in USAGE_COLUMNS if c in rows[0]] if rows else
                                [*group_by, *USAGE_COLUMNS[3:]])
        writer.writeheader()
        writer.writerows(rows)
        return Response(out.getvalue(), media_type="text/csv")
    return {"object": "list", "data": rows}
