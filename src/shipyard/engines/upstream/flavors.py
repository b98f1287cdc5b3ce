"""What differs between OpenAI-compatible servers, in one table.

Each engine accepts the OpenAI fields, but not the same extras, not the same `n`, not token-id
prompts everywhere, and reports its load under its own metric names. Taken from each server's
code and docs: vLLM's `vllm/entrypoints/openai/protocol.py` and `metrics.py`, TGI's router
(`tgi_queue_size`, 422 for validation errors, `n` unsupported in its Messages API), SGLang's
`sglang:num_queue_reqs`, llama.cpp's `tools/server` (`repeat_penalty`, `llamacpp:` gauges, one
choice per request), llama-cpp-python's `llama_cpp/server` (no /health or /metrics, `n` dropped,
`/extras/tokenize`), trtllm-serve (OpenAI fields plus `top_k`), and Shipyard's own worker.

Both llama.cpp servers sample with top-k 40 and min-p 0.05 (llama-cpp-python also with a 1.1
repeat penalty) unless told otherwise, which is not what an OpenAI client asked for: those are
pinned to "off" unless the request sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# SamplingParams field → (the value that means "not asked", the body field vLLM calls it)
VLLM_EXTRAS = {
    "top_k": (0, "top_k"),
    "repetition_penalty": (1.0, "repetition_penalty"),
    "ignore_eos": (False, "ignore_eos"),
    "stop_token_ids": ([], "stop_token_ids"),
    "skip_special_tokens": (True, "skip_special_tokens"),
}


@dataclass(frozen=True)
class Flavor:
    name: str
    extras: dict[str, str] = field(default_factory=dict)  # our field → the body field this server takes
    max_n: int | None = None  # None: any n
    token_id_prompts: bool = True  # completions accept a list of token ids
    completions: bool = True  # serves /v1/completions
    health_path: str | None = "/health"  # None: GET /v1/models answers for health
    metrics: tuple[str | None, str | None, str | None] | None = None  # waiting, running, KV usage
    tokenize: str | None = None  # "vllm" | "tgi" | "llamacpp" | "llamacpp_python": the shape of its /tokenize
    sampling_defaults: dict = field(default_factory=dict)  # sent unless the request sets them
    cache_salt: bool = False  # takes vLLM's `cache_salt`: KV prefix blocks partitioned per tenant


_ALL_VLLM = {name: body for name, (_, body) in VLLM_EXTRAS.items()}

FLAVORS: dict[str, Flavor] = {
    "vllm": Flavor("vllm", _ALL_VLLM, tokenize="vllm", cache_salt=True,
                   metrics=("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")),
    "shipyard": Flavor("shipyard", _ALL_VLLM, tokenize="vllm", health_path="/ready", cache_salt=True,  # /health: liveness
                       metrics=("shipyard:num_requests_waiting", "shipyard:num_requests_running",
                                "shipyard:kv_cache_usage_perc")),
    "sglang": Flavor("sglang", _ALL_VLLM,
                     metrics=("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage")),
    "tgi": Flavor("tgi", {}, max_n=1, token_id_prompts=False, tokenize="tgi",
                  metrics=("tgi_queue_size", "tgi_batch_current_size", None)),
    "llamacpp": Flavor("llamacpp", {"top_k": "top_k", "repetition_penalty": "repeat_penalty",
                                    "ignore_eos": "ignore_eos"}, max_n=1, tokenize="llamacpp",
                       metrics=("llamacpp:requests_deferred", "llamacpp:requests_processing",
                                "llamacpp:kv_cache_usage_ratio"),
                       sampling_defaults={"top_k": 0, "min_p": 0.0}),
    "llamacpp_python": Flavor("llamacpp_python", {"top_k": "top_k", "repetition_penalty": "repeat_penalty"},
                              max_n=1, token_id_prompts=False, health_path=None, tokenize="llamacpp_python",
                              sampling_defaults={"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}),
    "trtllm": Flavor("trtllm", {"top_k": "top_k"}, token_id_prompts=False),
    "openai": Flavor("openai", {}, token_id_prompts=False, health_path=None),
    # Triton's generate extension (engines/upstream/triton.py), not OpenAI's API
    "triton": Flavor("triton", {"top_k": "top_k", "repetition_penalty": "repetition_penalty"}, max_n=1,
                     token_id_prompts=False, health_path="/v2/health/ready",
                     metrics=("nv_inference_pending_request_count", None, None)),
}
