"""What a request asks of its output's shape, in engine terms: a JSON schema the text must keep
to (OpenAI's `response_format`) and the tools a chat's model may call.

Plain data, with no parsing library behind it: each engine decides how to honour it. The
embedded engines constrain their sampling to a grammar (engines/grammar.py) and parse calls out
of the text (engines/tools/); an upstream gets the same fields in its own dialect.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True, frozen=True)
class Tool:
    """A function the model may call. `parameters` is the JSON schema of its arguments."""

    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool = False

    def openai(self) -> dict:
        function: dict = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}

    @property
    def arguments_schema(self) -> dict:
        """Without `parameters` a function takes none (OpenAI's reading): the empty object."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self.parameters


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A call an assistant made, as a conversation hands it back."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def parsed_arguments(self):
        """The arguments as a value, for chat templates that render them themselves."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of call `index` has its id and name;
    `arguments` pieces concatenate to the call's JSON arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def openai(self) -> dict:
        delta: dict = {"index": self.index}
        function: dict = {"arguments": self.arguments}
        if self.id is not None:
            delta["id"], delta["type"] = self.id, "function"
        if self.name is not None:
            function["name"] = self.name
        delta["function"] = function
        return delta


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def merge_deltas(deltas: list[ToolCallDelta]) -> list[ToolCall]:
    """Streamed pieces → whole calls, in index order."""
    calls: dict[int, list] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, [None, None, []])
        call[0] = call[0] or delta.id
        call[1] = call[1] or delta.name
        call[2].append(delta.arguments)
    return [ToolCall(id=c[0] or new_call_id(), name=c[1] or "", arguments="".join(c[2]))
            for _, c in sorted(calls.items())]


@dataclass(slots=True, frozen=True)
class ResponseFormat:
    """`json_object`: any JSON object; `json_schema`: one that validates against `schema`."""

    type: Literal["json_object", "json_schema"]
    schema: dict | None = None
    name: str | None = None
    strict: bool = False

    def openai(self) -> dict:
        if self.type == "json_object":
            return {"type": "json_object"}
        spec: dict = {"name": self.name or "response", "schema": self.schema or {}}
        if self.strict:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}

    @property
    def effective_schema(self) -> dict:
        return self.schema if self.type == "json_schema" and self.schema is not None else {"type": "object"}


def tool_choice_openai(choice: str, name: str | None):
    """SamplingParams' tool choice back in OpenAI's form."""
    if choice == "named":
        return {"type": "function", "function": {"name": name}}
    return choice
