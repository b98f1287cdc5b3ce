"""Roles and what each may do. The api layer maps each route to one permission, in one table."""

from __future__ import annotations

import enum


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
    Role.TENANT_ADMIN: frozenset({Permission.KEYS_MANAGE, Permission.KEYS_READ, Permission.USAGE_READ,
                                  Permission.TENANTS_READ, Permission.MODELS_READ, Permission.CACHE_MANAGE,
                                  Permission.SCORES_WRITE, Permission.REVIEW}),
    Role.DEVELOPER: frozenset({Permission.INFERENCE, Permission.MODELS_READ, Permission.SCORES_WRITE}),
    Role.VIEWER: frozenset({Permission.USAGE_READ, Permission.TENANTS_READ, Permission.MODELS_READ}),
    Role.METRICS: frozenset({Permission.METRICS_READ}),
}

# Roles only an admin may hand out: they see or do more than one tenant's share.
ADMIN_GRANTED = frozenset({Role.ADMIN, Role.METRICS})


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False
