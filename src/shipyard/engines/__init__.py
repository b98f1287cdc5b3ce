"""Inference engines. Everything here knows tokens and text, never HTTP, keys or routing."""
