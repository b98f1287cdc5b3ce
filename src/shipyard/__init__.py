"""Shipyard: from a model folder to a production, OpenAI-compatible endpoint."""

__version__ = "0.1.0"
