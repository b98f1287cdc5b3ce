"""How a model family writes tool calls, after vLLM's tool parsers (`hermes`, `llama3_json`,
`mistral` in vllm/entrypoints/openai/tool_parsers/).

- hermes (Hermes 2 Pro, Qwen2/2.5/3, and Shipyard's default): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call.
- llama3_json (Llama 3.1+): `{"name": ..., "parameters": {...}}`, calls separated by `; `, at the
  start of the answer (optionally after `<|python_tag|>`).
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.

The family is read from the chat template (what it writes for a call), or set by the operator.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolFormat:
    name: str
    start: str  # what opens the calls
    end: str  # what closes one call ("" when nothing does)
    arguments_key: str  # "arguments" or "parameters"
    separator: str  # between two calls
    list_form: bool = False  # the calls are one JSON array after `start`
    bare_json: bool = False  # a `{` at the very start of the answer opens the calls too
    special_start: bool = False  # `start` is a special token (kept in the text when tools are asked)

    def call_prefix(self, name: str) -> str:
        """A call's text up to its arguments, as the grammar forces it (name first)."""
        import json

        return f'{{"name": {json.dumps(name)}, "{self.arguments_key}": '

    def call_open(self) -> str:
        return "<tool_call>\n" if self.name == "hermes" else ""

    def call_close(self) -> str:
        return "\n</tool_call>" if self.name == "hermes" else ""


HERMES = ToolFormat("hermes", start="<tool_call>", end="</tool_call>", arguments_key="arguments", separator="\n")
LLAMA3_JSON = ToolFormat("llama3_json", start="<|python_tag|>", end="", arguments_key="parameters", separator="; ",
                         bare_json=True, special_start=True)
MISTRAL = ToolFormat("mistral", start="[TOOL_CALLS]", end="", arguments_key="arguments", separator=", ",
                     list_form=True, special_start=True)

FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL)}


def detect_format(chat_template: str | None, configured: str | None = None) -> ToolFormat:
    """The operator's choice, else what the chat template writes for a call, else Hermes."""
    if configured:
        return FORMATS[configured]
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA3_JSON
    return HERMES


def template_knows_tools(chat_template: str | None) -> bool:
    """Whether the template renders a `tools` list itself (else Shipyard's Hermes prompt does)."""
    return bool(chat_template) and "tools" in chat_template
