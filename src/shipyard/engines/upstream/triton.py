"""NVIDIA Triton Inference Server's generate extension, for TensorRT-LLM and Python backends.

`POST /v2/models/{model}/generate_stream` with the ensemble's input tensors as JSON fields
(`text_input`, `max_tokens`, `temperature`, `top_p`, `top_k`, `stop_words`, `random_seed`,
`repetition_penalty`, `presence_penalty`, `frequency_penalty`, `stream`); Triton answers
Server-Sent Events whose `text_output` is each step's new text, or `{"error": "..."}`. Readiness
is `GET /v2/health/ready`; load is `nv_inference_pending_request_count` (waiting) from its
`/metrics`. There is no finish reason or usage on the wire: a response that used all of
`max_tokens` ended for "length", any other for "stop", and events are counted as tokens. Chat
messages go through a local tokenizer's chat template (`tokenizer:`), as Triton takes text.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shipyard.engines.base import GenerationChunk, GenerationRequest, Usage, estimate_prompt_tokens
from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.upstream.openai_http import OpenAIHTTPEngine, OpenAIHTTPEngineConfig
from shipyard.engines.upstream.stream import UpstreamStream

class TritonEngineConfig(OpenAIHTTPEngineConfig):
    engine: Literal["triton"] = "triton"  # type: ignore[assignment]
    flavor: Literal["triton"] = "triton"  # type: ignore[assignment]
    triton_model: str = Field("ensemble", description="The model (ensemble) name in Triton's repository")


class TritonEngine(OpenAIHTTPEngine):
    async def _learn_context_length(self) -> None:
        """Triton's model metadata has no context length: the config's `max_model_len` stands."""

    def generate(self, request: GenerationRequest) -> TritonStream:
        path, body = self.request_body(request)
        return TritonStream(self, request, path, body)

    def request_body(self, request: GenerationRequest) -> tuple[str, dict]:
        p, prompt = request.params, request.prompt
        if p.n != 1:
            raise InvalidRequestError("n must be 1 for this deployment's engine (triton).", "n")
        if p.logprobs or p.prompt_logprobs is not None:
            raise InvalidRequestError("logprobs are not supported by this deployment's engine (triton).", "logprobs",
                                      "unsupported_parameter")
        if p.ignore_eos or p.stop_token_ids or p.logit_bias:
            raise InvalidRequestError("ignore_eos, stop_token_ids and logit_bias are not supported by this "
                                      "deployment's engine (triton).", None, "unsupported_parameter")
        body: dict = {"text_input": self._text(prompt), "stream": True,
                      "max_tokens": p.max_tokens if p.max_tokens is not None else 256,
                      "temperature": p.temperature, "top_p": p.top_p}
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.stop:
            body["stop_words"] = list(p.stop)
        if p.seed is not None:
            body["random_seed"] = p.seed
        for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(p, name)
            if value != (1.0 if name == "repetition_penalty" else 0.0):
                body[name] = value
        return f"/v2/models/{self.config.triton_model}/generate_stream", body

    def _text(self, prompt) -> str:
        if prompt.messages is not None:
            if self._tokenizer is None:
                raise InvalidRequestError("Chat needs a local tokenizer (its chat template) for this deployment's "
                                          "engine (triton): set `tokenizer:`.", "messages")
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if prompt.token_ids is not None:
            if self._tokenizer is None:
                raise InvalidRequestError("Token-id prompts need a local tokenizer for this deployment's engine "
                                          "(triton).", "prompt")
            return self._tokenizer.decode(prompt.token_ids)
        return prompt.text or ""


class TritonStream(UpstreamStream):
    def _clean_end(self) -> bool:
        return True  # Triton's stream simply ends

    def _translate(self, event: dict) -> None:
        text = event.get("text_output")
        if not isinstance(text, str) or not text:
            return
        self._sent_tokens += 1
        self._ready.append(GenerationChunk(request_id=self._request.request_id, index=0, text=text, token_ids=[],
                                           num_tokens=1))

    def _end(self) -> None:
        maximum = self._body.get("max_tokens")
        reason = "length" if maximum is not None and self._sent_tokens >= maximum else "stop"
        self._ready.append(GenerationChunk(
            request_id=self._request.request_id, index=0, text="", token_ids=[], finish_reason=reason,
            usage=Usage(estimate_prompt_tokens(self._request.prompt), self._sent_tokens)))
        self._finish_stream()
