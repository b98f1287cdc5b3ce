"""Shipyard: from a model folder to a production, OpenAI-compatible endpoint."""

import logging

__version__ = "0.1.0"


class _QuietMissingKernels(logging.Filter):
    """torchao (imported by transformers) warns at import that its CUDA-only kernel libraries do
    not load, which on a machine without CUDA is expected: not worth two warnings a start."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load") and "Could not load this library" in message)


logging.getLogger("torchao").addFilter(_QuietMissingKernels())
