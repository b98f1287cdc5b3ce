"""Caching in front of the engines: answers reused instead of recomputed.

`keys` (what makes two requests the same), `recording` (a finished answer as stored chunks),
`exact` (identical requests, in process or in Redis), `semantic` (near-identical prompts by
embedding similarity), `engine` (the layer itself: an Engine wrapping a deployment's engine).
KV prefix sharing lives in the embedded engine (`engines/transformers_engine/prefix_cache.py`).
"""
