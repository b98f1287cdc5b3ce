"""Errors an engine raises. The api layer maps each to an HTTP status; engines know no HTTP."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: something the engine could not do for this request."""


class InvalidRequestError(EngineError):
    """The request asks for something this engine cannot honour (maps to 400)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ContextLengthExceededError(InvalidRequestError):
    """Prompt (plus requested completion) does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int | None, max_model_len: int):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        if max_tokens is None:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"has {prompt_tokens} tokens, which leaves no room for a completion."
            )
        else:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
                f"completion). Please reduce the prompt or the completion length."
            )
        super().__init__(message, param="messages", code="context_length_exceeded")


class EngineOverloadedError(EngineError):
    """The waiting queue is full; the caller should retry later (maps to 503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineUnavailableError(EngineError):
    """The engine is not loaded, stopping, or has failed (maps to 503)."""


class UpstreamError(EngineError):
    """An upstream engine answered with something unusable: a 5xx, a malformed body, a broken
    stream (maps to 502). Another replica may do better."""


class EngineTimeoutError(EngineError):
    """The engine did not answer in time: no first token, or too long between tokens (maps to 504)."""


# Failures worth trying on another replica: nothing reached the client, and the fault is the
# replica's (down, overloaded, broken), not the request's.
RETRIABLE = (EngineUnavailableError, EngineOverloadedError, UpstreamError, EngineTimeoutError)
