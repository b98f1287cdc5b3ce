"""OpenAI request bodies (chat and legacy completions) and their translation to engine terms.

Fields follow OpenAI's published API; vLLM's well-known extras (`top_k`, `repetition_penalty`,
`ignore_eos`, `stop_token_ids`, `skip_special_tokens`) are accepted too. Unknown fields are
ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shipyard.api.errors import APIError
from shipyard.api.tools_protocol import ToolCallIn, output_shape
from shipyard.engines.base import ChatMessage, Prompt, SamplingParams


class StreamOptions(BaseModel):
    include_usage: bool = False


class CacheOptions(BaseModel):
    """Per-request cache control, as LiteLLM spells it: `{"no-cache": true}` skips the lookup (the
    fresh answer is still stored: a refresh); `{"no-store": true}` skips the cache entirely."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    no_cache: bool = Field(False, alias="no-cache")
    no_store: bool = Field(False, alias="no-store")


def cache_control(options: CacheOptions | None, header: str | None) -> str | None:
    """The body's `cache` field or the HTTP Cache-Control header (no-store wins)."""
    directives = {d.strip().lower() for d in (header or "").split(",")}
    if (options is not None and options.no_store) or "no-store" in directives:
        return "no-store"
    if (options is not None and options.no_cache) or "no-cache" in directives:
        return "no-cache"
    return None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _tool_turns(self):
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a message with role 'tool' must have a tool_call_id (the call it answers)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool_calls")
        return self

    def engine_message(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.text(), name=self.name, tool_call_id=self.tool_call_id,
                           tool_calls=[c.engine_call() for c in self.tool_calls] if self.tool_calls else None)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"Content parts of type '{part.type}' are not supported by this model; "
                               "only 'text' parts are.", param="messages", code="unsupported_content")
            parts.append(part.text)
        return "".join(parts)


# Bounds that keep one request from costing the batch it shares: stop strings are matched in
# linear time, but building and holding them is not free.
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 300  # OpenAI's own limit


def check_text(value: Any, path: str = "") -> None:
    """Every string must be valid Unicode: a lone surrogate (JSON "\\ud800") is refused here,
    with the field's name, rather than failing in a tokenizer."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path or 'the body'} contains invalid Unicode (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{path}[{index}]")


class NullsAreDefaults(BaseModel):
    """Request bodies: valid Unicode throughout, and an explicit null is the field's default."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_defaults(cls, data):
        """An explicit null is the field's default, as the spec's "nullable" fields allow (and
        as clients that serialise every field send)."""
        if isinstance(data, dict):
            check_text(data)
            return {key: value for key, value in data.items() if value is not None}
        return data


class _SamplingFields(NullsAreDefaults):
    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256, description="the caller's end user, for cost per user")
    # vLLM-style extras
    top_k: int = Field(0, ge=-1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # vLLM: logprobs of every prompt token
    cache: CacheOptions | None = None
    # vLLM's: a further partition of the KV prefix cache within the caller's tenant
    cache_salt: str | None = Field(None, min_length=1, max_length=256)
    # Shipyard's extension: the source an answer should keep to (faithfulness is scored against it)
    reference_context: str | None = Field(None, max_length=200_000)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        if isinstance(value, str):
            value = [value]
        if value is None:
            return value
        if any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(value)}")
        if any(len(s) > MAX_STOP_LENGTH for s in value):
            raise ValueError(f"each stop sequence may be at most {MAX_STOP_LENGTH} characters long")
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, value):
        if value is not None and len(value) > MAX_STOP_TOKEN_IDS:
            raise ValueError(f"at most {MAX_STOP_TOKEN_IDS} stop_token_ids are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens")
        for key, bias in value.items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values must be between -100 and 100")
        return value

    def _sampling(self, max_tokens: int | None, logprobs: bool, top_logprobs: int,
                  prompt_logprobs: int | None = None) -> SamplingParams:
        if self.prompt_logprobs is not None and self.stream:
            raise APIError(400, "prompt_logprobs is not available when stream is enabled.", param="prompt_logprobs",
                           code="unsupported_parameter")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k, 0),
            n=self.n,
            stop=list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            seed=self.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            skip_special_tokens=self.skip_special_tokens,
            prompt_logprobs=self.prompt_logprobs if prompt_logprobs is None else prompt_logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _checks(self):
        if not self.messages:
            raise ValueError("messages must contain at least one message")
        return self

    def to_engine(self) -> tuple[Prompt, SamplingParams]:
        shape = output_shape(self.tools, self.tool_choice, self.response_format)
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs",
                           code="invalid_value")
        messages = [m.engine_message() for m in self.messages]
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens",
                           code="invalid_value")
        params = self._sampling(max_tokens, self.logprobs, self.top_logprobs or 0)
        params.response_format, params.tool_choice, params.tool_name = shape.response_format, shape.choice, shape.name
        params.parallel_tool_calls = self.parallel_tool_calls
        return Prompt(messages=messages, tools=shape.tools), params


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0, description="0 scores the prompt without generating")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[Prompt]:
        p = self.prompt
        if isinstance(p, str):
            return [Prompt(text=p)]
        if not p:
            raise APIError(400, "prompt must not be empty.", param="prompt", code="invalid_value")
        if all(isinstance(x, int) for x in p):
            return [Prompt(token_ids=list(p))]
        if all(isinstance(x, str) for x in p):
            return [Prompt(text=x) for x in p]
        if all(isinstance(x, list) for x in p):
            if any(not x for x in p):
                raise APIError(400, "Token-id prompts must not be empty.", param="prompt", code="invalid_value")
            return [Prompt(token_ids=list(x)) for x in p]
        raise APIError(400, "prompt must be a string, a list of strings, or token ids.", param="prompt")

    def to_engine(self) -> tuple[list[Prompt], SamplingParams]:
        if self.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model.", param="suffix",
                           code="unsupported_parameter")
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "best_of different from n is not supported.", param="best_of",
                           code="unsupported_parameter")
        if self.echo and self.stream:
            raise APIError(400, "echo is not supported with stream.", param="echo", code="unsupported_parameter")
        prompts = self.prompts()
        logprobs = self.logprobs is not None
        # echo with logprobs scores the prompt too: one entry per prompt token (the first null).
        prompt_logprobs = self.logprobs if self.echo and logprobs else None
        if self.prompt_logprobs is not None:
            prompt_logprobs = max(self.prompt_logprobs, prompt_logprobs or 0)
        return prompts, self._sampling(self.max_tokens, logprobs, self.logprobs or 0, prompt_logprobs)
