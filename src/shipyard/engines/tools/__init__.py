"""Tool calling for the embedded engines: how each model family writes a call (formats.py),
how a chat with tools becomes a prompt (prompt.py) and how calls are read back out of the
streamed text (parser.py)."""
