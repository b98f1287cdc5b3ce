"""The chat body's shape fields, read and bounded: `tools`, `tool_choice`, `response_format`,
and the tool turns of a conversation (an assistant's `tool_calls`, a `tool` result).

Their meaning is OpenAI's (../shared/openai/openapi.yaml): a function name is 1-64 of
`[a-zA-Z0-9_-]`, at most 128 tools, `tool_choice` none/auto/required or one named function,
`response_format` text, json_object or json_schema (a name, a schema, `strict`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shipyard.api.errors import APIError
from shipyard.engines.structured import ResponseFormat, Tool, ToolCall

MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024  # one schema, as JSON
MAX_DESCRIPTION = 8192
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=64)
    arguments: str = Field("", max_length=256 * 1024)


class ToolCallIn(BaseModel):
    """A call in an assistant turn the client sends back."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: _Function

    def engine_call(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.function.name, arguments=self.function.arguments)


@dataclass
class OutputShape:
    tools: list[Tool] | None
    choice: str
    name: str | None
    response_format: ResponseFormat | None


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _schema(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{param} must be a JSON schema object.", param)
    if len(json.dumps(value)) > MAX_SCHEMA_BYTES:
        raise _bad(f"{param} is larger than {MAX_SCHEMA_BYTES} bytes.", param, "schema_too_large")
    return value


def read_tools(tools: list[dict] | None) -> list[Tool] | None:
    if not tools:
        return None
    if len(tools) > MAX_TOOLS:
        raise _bad(f"At most {MAX_TOOLS} tools are allowed, got {len(tools)}.", "tools")
    out, names = [], set()
    for i, raw in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(raw.get("function"), dict):
            raise _bad(f"{param} must be {{\"type\": \"function\", \"function\": {{...}}}}.", param)
        function = raw["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(f"{param}.function.name must be 1-64 letters, digits, '_' or '-'.", f"{param}.function.name")
        if name in names:
            raise _bad(f"Two tools are named '{name}'.", f"{param}.function.name")
        names.add(name)
        description = function.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
            raise _bad(f"{param}.function.description must be a string of at most {MAX_DESCRIPTION} characters.",
                       f"{param}.function.description")
        parameters = function.get("parameters")
        if parameters is not None:
            parameters = _schema(parameters, f"{param}.function.parameters")
        strict = function.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad(f"{param}.function.strict must be a boolean.", f"{param}.function.strict")
        out.append(Tool(name=name, description=description, parameters=parameters, strict=bool(strict)))
    return out


def read_tool_choice(choice: Any, tools: list[Tool] | None) -> tuple[str, str | None]:
    if choice is None:
        return ("auto" if tools else "none"), None
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise _bad("tool_choice 'required' needs at least one tool in 'tools'.", "tool_choice")
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not tools or name not in {t.name for t in tools}:
            raise _bad(f"tool_choice names the function {name!r}, which is not among the tools.", "tool_choice")
        return "named", name
    raise _bad("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": "
               "{\"name\": ...}}.", "tool_choice")


def read_response_format(value: dict | None) -> ResponseFormat | None:
    if value is None:
        return None
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise _bad("response_format json_schema needs a 'json_schema' object.", "response_format.json_schema")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad("response_format.json_schema.name must be 1-64 letters, digits, '_' or '-'.",
                       "response_format.json_schema.name")
        schema = spec.get("schema")
        schema = _schema(schema, "response_format.json_schema.schema") if schema is not None else None
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad("response_format.json_schema.strict must be a boolean.", "response_format.json_schema.strict")
        return ResponseFormat("json_schema", schema=schema, name=name, strict=bool(strict))
    raise _bad(f"response_format type {kind!r} is not one of text, json_object, json_schema.", "response_format")


def output_shape(tools: list[dict] | None, tool_choice: Any, response_format: dict | None) -> OutputShape:
    engine_tools = read_tools(tools)
    choice, name = read_tool_choice(tool_choice, engine_tools)
    return OutputShape(engine_tools, choice, name, read_response_format(response_format))
