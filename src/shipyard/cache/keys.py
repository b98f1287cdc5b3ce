"""What makes two requests the same answer: tenant, deployment, model identity and every input
that changes the output. Only requests whose output is fixed by their inputs are reused, unless
a deployment opts in to reusing sampled answers too."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from shipyard.engines.base import GenerationRequest, SamplingParams


def deterministic(params: SamplingParams) -> bool:
    """Greedy decoding, or sampling from a fixed seed."""
    return params.temperature == 0 or params.seed is not None


def canonical_params(params: SamplingParams) -> str:
    fields = dataclasses.asdict(params)
    fields["logit_bias"] = sorted((int(k), v) for k, v in params.logit_bias.items())
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def canonical_prompt(request: GenerationRequest) -> str:
    """Token ids where the server has them (the chat template applied), else the prompt as sent;
    the tools offered either way (what a call may name is part of the question)."""
    prompt = request.prompt
    tools = [dataclasses.asdict(t) for t in prompt.tools] if prompt.tools else None
    if request.prompt_ids is not None:
        return json.dumps({"ids": request.prompt_ids, "tools": tools}, separators=(",", ":"), sort_keys=True)
    messages = [dataclasses.asdict(m) for m in prompt.messages] if prompt.messages else None
    return json.dumps({"text": prompt.text, "ids": prompt.token_ids, "messages": messages, "tools": tools},
                      separators=(",", ":"), sort_keys=True)


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
    prompt = request.prompt
    if prompt.tools or any(m.tool_calls or m.tool_call_id for m in prompt.messages or []):
        return None
    return prompt.as_text()
