"""What makes two requests the same answer: tenant, deployment, model identity and every input
that changes the output. Only requests whose output is fixed by their inputs are reused, unless
a deployment opts in to reusing sampled answers too."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from shipyard.engines.base import GenerationRequest, SamplingParams
from shipyard.engines.tools.prompt import has_tool_turns


def deterministic(params: SamplingParams) -> bool:
    """Greedy decoding, or sampling from a fixed seed."""
    return params.temperature == 0 or params.seed is not None


_SHAPE_FIELDS = ("response_format", "tool_choice", "tool_name", "parallel_tool_calls")


def canonical_params(params: SamplingParams) -> str:
    fields = dataclasses.asdict(params)
    fields["logit_bias"] = sorted((int(k), v) for k, v in params.logit_bias.items())
    if params.response_format is None:  # no output shape: the key it had before shapes existed (the
        for name in _SHAPE_FIELDS:     # tool fields, which only matter with tools, are in the prompt's key)
            fields.pop(name)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def canonical_prompt(request: GenerationRequest) -> str:
    """Token ids where the server has them (the chat template applied), else the prompt as sent;
    with the tools offered and the tool turns when there are any (what a call may name is part of
    the question). Requests without tools keep the keys they always had."""
    prompt = request.prompt
    if not has_tool_turns(prompt):
        if request.prompt_ids is not None:
            return json.dumps({"ids": request.prompt_ids}, separators=(",", ":"))
        return json.dumps({"text": prompt.text, "ids": prompt.token_ids,
                           "messages": [[m.role, m.content] for m in prompt.messages] if prompt.messages else None},
                          separators=(",", ":"))
    p = request.params
    shape = {"tools": [dataclasses.asdict(t) for t in prompt.tools] if prompt.tools else None,
             "choice": [p.tool_choice, p.tool_name, p.parallel_tool_calls]}
    if request.prompt_ids is not None:
        return json.dumps({"ids": request.prompt_ids, **shape}, separators=(",", ":"), sort_keys=True)
    messages = [dataclasses.asdict(m) for m in prompt.messages]
    return json.dumps({"messages": messages, **shape}, separators=(",", ":"), sort_keys=True)


def partition(scope: str, deployment: str, identity: str, params: SamplingParams) -> str:
    """Everything but the prompt: answers are only ever reused within one partition."""
    digest = hashlib.sha256()
    for part in (scope, deployment, identity, canonical_params(params)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def request_key(partition_id: str, request: GenerationRequest) -> str:
    return hashlib.sha256(f"{partition_id}\0{canonical_prompt(request)}".encode()).hexdigest()


def prompt_text(request: GenerationRequest) -> str | None:
    """The prompt as text, for embedding (None for token-id prompts, and for chats with tools: a
    similar question with other tools or results is not the same question)."""
    return None if has_tool_turns(request.prompt) else request.prompt.as_text()
