"""Validate server output against OpenAI's published OpenAPI description (../shared/openai)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jsonschema
import yaml

SPEC = Path(os.environ.get("SHIPYARD_OPENAPI", Path(__file__).resolve().parents[1].parent / "shared/openai/openapi.yaml"))


def _fix_nullable(node):
    """The spec mixes OpenAPI 3.0's `nullable: true` into 3.1 schemas; turn it into JSON Schema."""
    if isinstance(node, dict):
        node = {k: _fix_nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            if "type" in node and isinstance(node["type"], str):
                node["type"] = [node["type"], "null"]
                if "enum" in node:
                    node["enum"] = [*node["enum"], None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_fix_nullable(v) for v in node]
    return node


@functools.cache
def _components() -> dict:
    with open(SPEC) as f:
        spec = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return _fix_nullable(spec["components"])


@functools.cache
def _validator(name: str):
    schema = {"$ref": f"#/components/schemas/{name}", "components": _components()}
    return jsonschema.Draft202012Validator(schema)


def validate(name: str, payload: dict) -> None:
    """Raise jsonschema.ValidationError if `payload` is not a valid `name` object."""
    _validator(name).validate(payload)
