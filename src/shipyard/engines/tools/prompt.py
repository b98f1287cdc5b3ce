"""A chat with tools as the messages a chat template renders.

A template that knows tools (Qwen2.5, Llama 3.1, Mistral, Hermes) gets them as Hugging Face
passes them: `tools=[...]`, assistant turns with `tool_calls` (arguments as values) and `tool`
turns. A template that does not (the demo's ChatML, many fine-tunes) gets Shipyard's default:
the Hermes 2 Pro system prompt listing the tools, calls written into the assistant's text as
`<tool_call>` blocks, and results as `<tool_response>` blocks in a user turn.
"""

from __future__ import annotations

import json

from shipyard.engines.base import ChatMessage, Prompt
from shipyard.engines.tools.formats import ToolFormat

HERMES_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions about "
    "what values to plug into functions. Here are the available tools: <tools>\n{tools}\n</tools>\n"
    "For each function call return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags as follows:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
    "</tool_call>"
)


def has_tool_turns(prompt: Prompt) -> bool:
    return bool(prompt.tools) or any(m.tool_calls or m.role == "tool" for m in prompt.messages or [])


def template_inputs(prompt: Prompt, fmt: ToolFormat, native: bool) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) for `apply_chat_template`."""
    messages = prompt.messages or []
    if native:
        tools = [t.openai() for t in prompt.tools] if prompt.tools else None
        return [_native(m) for m in messages], tools
    rendered = [_rendered(m, fmt) for m in messages]
    if prompt.tools:
        listing = "\n".join(json.dumps(t.openai(), ensure_ascii=False) for t in prompt.tools)
        system = HERMES_SYSTEM.format(tools=listing)
        if rendered and rendered[0]["role"] in ("system", "developer"):
            rendered[0] = {"role": "system", "content": system + "\n\n" + rendered[0]["content"]}
        else:
            rendered.insert(0, {"role": "system", "content": system})
    return rendered, None


def _native(message: ChatMessage) -> dict:
    out: dict = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.parsed_arguments()}}
                             for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _rendered(message: ChatMessage, fmt: ToolFormat) -> dict:
    """Tool turns written as text in the Hermes style (the default format's own)."""
    if message.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"}
    if message.tool_calls:
        calls = "\n".join(f"<tool_call>\n{json.dumps({'name': c.name, 'arguments': c.parsed_arguments()})}\n</tool_call>"
                          for c in message.tool_calls)
        content = f"{message.content}\n{calls}" if message.content else calls
        return {"role": message.role, "content": content}
    return {"role": message.role, "content": message.content}
