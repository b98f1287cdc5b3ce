"""A chat's tools, tool turns and response format as each upstream server takes them.

vLLM, SGLang, llama.cpp's server, Shipyard's own workers and OpenAI take OpenAI's fields as they
are (vLLM: `vllm/entrypoints/openai/protocol.py`, `ChatCompletionRequest.tools/tool_choice/
response_format`). TGI's Messages API takes the tools as OpenAI's and the schema as its own
grammar, `{"type": "json", "value": schema}` (text-generation-inference `GrammarType`).
llama-cpp-python's server takes a response format but parses no tool calls; trtllm-serve and
Triton's generate extension neither: those are refused with a 400 that names the deployment.
"""

from __future__ import annotations

from shipyard.engines.base import ChatMessage, GenerationRequest
from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.structured import tool_choice_openai

# flavor → (takes a response format, takes tools)
SUPPORT = {
    "vllm": (True, True), "shipyard": (True, True), "sglang": (True, True), "llamacpp": (True, True),
    "openai": (True, True), "tgi": (True, True), "llamacpp_python": (True, False),
    "trtllm": (False, False), "triton": (False, False),
}


def message(m: ChatMessage) -> dict:
    out: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [call.openai() for call in m.tool_calls]
        if not m.content:
            out["content"] = None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def shape_fields(request: GenerationRequest, flavor: str, deployment: str) -> dict:
    """The body fields for the request's output shape (empty when it asks none)."""
    params, tools = request.params, request.prompt.tools
    formats, calls = SUPPORT.get(flavor, (False, False))
    fields: dict = {}
    if tools:
        if not calls and params.tool_choice != "none":
            raise InvalidRequestError(f"The deployment '{deployment}' ({flavor}) cannot call tools; omit 'tools' or "
                                      f"set tool_choice to 'none'.", "tools", "unsupported_parameter")
        if calls:
            fields["tools"] = [tool.openai() for tool in tools]
            fields["tool_choice"] = tool_choice_openai(params.tool_choice, params.tool_name)
            if not params.parallel_tool_calls:
                fields["parallel_tool_calls"] = False
    answer = params.response_format
    if answer is not None:
        if not formats:
            raise InvalidRequestError(f"The deployment '{deployment}' ({flavor}) cannot keep to a response_format.",
                                      "response_format", "unsupported_parameter")
        fields["response_format"] = ({"type": "json", "value": answer.effective_schema} if flavor == "tgi"
                                     else answer.openai())
    return fields
