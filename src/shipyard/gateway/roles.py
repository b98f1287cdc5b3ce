"""Roles and what each may do. The api layer maps each route to one permission, in one table."""

from __future__ import annotations

import enum

from shipyard.gateway.errors import PermissionDenied


class Role(str, enum.Enum):
    ADMIN = "admin"  # everything, every tenant
    TENANT_ADMIN = "tenant-admin"  # manage keys and read usage of its own tenant
    DEVELOPER = "developer"  # call inference
    VIEWER = "viewer"  # read usage of its own tenant
    METRICS = "metrics"  # scrape /metrics (global figures: admins create these keys, e.g. for Prometheus)


class Permission(str, enum.Enum):
    INFERENCE = "inference"
    MODELS_READ = "models:read"
    METRICS_READ = "metrics:read"
    TENANTS_MANAGE = "tenants:manage"  # create tenants (global)
    TENANTS_READ = "tenants:read"  # own tenant (admin: all)
    KEYS_MANAGE = "keys:manage"
    KEYS_READ = "keys:read"
    USAGE_READ = "usage:read"
    DEPLOYMENTS_MANAGE = "deployments:manage"  # see replicas, drain and resume them (admins)
    SCORES_WRITE = "scores:write"  # score requests of one's own tenant (feedback, labels)
    CACHE_MANAGE = "cache:manage"  # forget cached answers (own tenant; admin: any, or a whole deployment)
    MONITOR_MANAGE = "monitor:manage"  # alert rules, drift references (global: admins)
    REVIEW = "review"  # the human review queue: read, claim and label responses (own tenant; admin: any)


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    # /metrics is global (every tenant's traffic), so no tenant-scoped role reads it.
    # A tenant's admin may also call the models, as an organization's owner may.
    Role.TENANT_ADMIN: frozenset({Permission.INFERENCE, Permission.KEYS_MANAGE, Permission.KEYS_READ,
                                  Permission.USAGE_READ, Permission.TENANTS_READ, Permission.MODELS_READ,
                                  Permission.CACHE_MANAGE, Permission.SCORES_WRITE, Permission.REVIEW}),
    Role.DEVELOPER: frozenset({Permission.INFERENCE, Permission.MODELS_READ, Permission.SCORES_WRITE}),
    Role.VIEWER: frozenset({Permission.USAGE_READ, Permission.TENANTS_READ, Permission.MODELS_READ}),
    Role.METRICS: frozenset({Permission.METRICS_READ}),
}

# What each permission lets a key do, for refusals a person reads
ACTIONS: dict[Permission, str] = {
    Permission.INFERENCE: "call the models",
    Permission.MODELS_READ: "list the models",
    Permission.METRICS_READ: "read /metrics",
    Permission.TENANTS_MANAGE: "create or change tenants",
    Permission.TENANTS_READ: "read tenants",
    Permission.KEYS_MANAGE: "create, rotate or revoke API keys",
    Permission.KEYS_READ: "read API keys",
    Permission.USAGE_READ: "read usage",
    Permission.DEPLOYMENTS_MANAGE: "manage deployments and replicas",
    Permission.SCORES_WRITE: "write scores and feedback",
    Permission.CACHE_MANAGE: "clear cached answers",
    Permission.MONITOR_MANAGE: "manage monitoring (alert rules, drift references, experiments, triggers)",
    Permission.REVIEW: "use the review queue",
}


def refusal(role: str, permission: Permission) -> str:
    """Why a key may not do this, and which role may."""
    try:
        granted = ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        granted = frozenset()
    able = [r.value for r, perms in ROLE_PERMISSIONS.items() if permission in perms and r is not Role.ADMIN]
    who = f"a key with the role {' or '.join(repr(r) for r in able)} or 'admin'" if able else "an 'admin' key"
    can = ", ".join(ACTIONS[p] for p in Permission if p in granted) or "nothing"
    return f"A key with the role '{role}' may not {ACTIONS[permission]} (it may: {can}). Use {who}."


# Roles only an admin may hand out: they see or do more than one tenant's share.
ADMIN_GRANTED = frozenset({Role.ADMIN, Role.METRICS})


def tenant_scope(principal, asked: str | None, what: str) -> str | None:
    """The tenant a read or a change is limited to: an admin may name any tenant, or none (None:
    every tenant); anyone else gets their own, and naming another is refused (403)."""
    if principal.role == Role.ADMIN.value:
        return asked
    if asked is not None and asked != principal.tenant_id:
        raise PermissionDenied(f"You may only {what} of your own tenant.")
    return principal.tenant_id


def owns(principal, tenant_id: str) -> bool:
    """Whether the caller may see a resource of this tenant (others' answer 404, as if absent)."""
    return principal.role == Role.ADMIN.value or tenant_id == principal.tenant_id


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False
