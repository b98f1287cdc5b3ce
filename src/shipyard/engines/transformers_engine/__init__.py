"""The embedded engine: any local Hugging Face causal LM, continuously batched on PyTorch.

A nano-vllm-shaped engine: `sequence` (one choice's state), `scheduler` (who runs next),
`kv_cache` (per-slot key/value storage the HF attention layers write into), `model_runner`
(prefill and decode forwards), `sampler` (per-row sampling), `core` (the step loop, on its own
thread) and `engine` (the async `Engine` facade the server talks to).
"""

from shipyard.engines.transformers_engine.engine import TransformersEngine, TransformersEngineConfig

__all__ = ["TransformersEngine", "TransformersEngineConfig"]
