"""vLLM's /tokenize and /detokenize, in vLLM's shapes (lm-eval and guidellm look for them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shipyard.api.authorization import services_of
from shipyard.api.errors import APIError
from shipyard.api.protocol import Message, NullsAreDefaults
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.engines.base import ChatMessage, Prompt

router = APIRouter(route_class=StrictJSONRoute)

MAX_TOKENS_PER_CALL = 1_000_000


class TokenizeRequest(NullsAreDefaults):
    """Either `prompt` (text, with the tokenizer's special tokens unless told otherwise) or
    `messages` (through the chat template, with the generation prompt), as vLLM takes them."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = True  # vLLM's default is off; a caller reading them should not have to ask


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(max_length=MAX_TOKENS_PER_CALL)


def _engine(request: Request, model: str | None):
    services = services_of(request)
    if model is None:
        models = list(services.router.engines())  # the text models (embedding models have their own route)
        if len(models) != 1:
            raise APIError(400, "Name the model: this server has several.", param="model", code="invalid_value")
        model = models[0]
    return services.router.resolve(model)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    engine = _engine(request, body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "Send exactly one of 'prompt' and 'messages'.", param="prompt", code="invalid_value")
    if body.messages is not None:
        prompt = Prompt(messages=[ChatMessage(role=m.role, content=m.text()) for m in body.messages])
    else:
        prompt = Prompt(text=body.prompt)
    ids = await engine.encode(prompt, add_special_tokens=body.add_special_tokens)
    if ids is None:
        raise APIError(400, "This model's engine cannot tokenize.", code="unsupported")
    return {"count": len(ids), "max_model_len": engine.model.max_model_len, "tokens": ids,
            "token_strs": engine.token_strings(ids) if body.return_token_strs else None}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    return {"prompt": await _engine(request, body.model).decode(body.tokens)}
