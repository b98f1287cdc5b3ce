"""An in-process llama.cpp backend for the embedded engine: GGUF files, batched sequences.

`native` wraps llama-cpp-python's C API (model, context, batch, KV-cache operations); `runner`
is the step's forward over it; `engine` is the embedded engine with that runner.
"""

from shipyard.engines.llamacpp_engine.engine import LlamaCppEngine, LlamaCppEngineConfig

__all__ = ["LlamaCppEngine", "LlamaCppEngineConfig"]
