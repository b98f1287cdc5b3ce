"""Roles and what each may do. The api layer maps each route to one permission, in one table."""

from __future__ import annotations

import enum


class Role(str, enum.Enum):
    ADMIN = "admin"  # everything, every tenant
    TENANT_ADMIN = "tenant-admin"  # manage keys and read usage of its own tenant
    DEVELOPER = "developer"  # call inference
    VIEWER = "viewer"  # read usage and metrics of its own tenant


class Permission(str, enum.Enum):
    INFERENCE = "inference"
    MODELS_READ = "models:read"
    METRICS_READ = "metrics:read"
    TENANTS_MANAGE = "tenants:manage"  # create tenants (global)
    TENANTS_READ = "tenants:read"  # own tenant (admin: all)
    KEYS_MANAGE = "keys:manage"
    KEYS_READ = "keys:read"
    USAGE_READ = "usage:read"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.TENANT_ADMIN: frozenset({Permission.KEYS_MANAGE, Permission.KEYS_READ, Permission.USAGE_READ,
                                  Permission.TENANTS_READ, Permission.MODELS_READ, Permission.METRICS_READ}),
    Role.DEVELOPER: frozenset({Permission.INFERENCE, Permission.MODELS_READ}),
    Role.VIEWER: frozenset({Permission.USAGE_READ, Permission.METRICS_READ, Permission.TENANTS_READ,
                            Permission.MODELS_READ}),
}


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False
