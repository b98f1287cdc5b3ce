"""Engines that run elsewhere, reached over HTTP: any OpenAI-compatible server (vLLM, TGI,
SGLang, TensorRT-LLM's trtllm-serve, llama.cpp's server, a Shipyard worker, a hosted API)."""

from shipyard.engines.upstream.openai_http import OpenAIHTTPEngine, OpenAIHTTPEngineConfig
from shipyard.engines.upstream.triton import TritonEngine, TritonEngineConfig

__all__ = ["OpenAIHTTPEngine", "OpenAIHTTPEngineConfig", "TritonEngine", "TritonEngineConfig"]
