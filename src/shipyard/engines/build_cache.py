"""Where what is built once is kept (llama.cpp's sources and builds, converted models, measurements):
`$XDG_CACHE_HOME/shipyard`, else `~/.cache/shipyard`, the folder scripts/*.sh use too. In the
engines' floor because the llamacpp engine builds its C loop there; optimize/ keeps its
conversions and measurements beside it."""

from __future__ import annotations

import os
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # scripts/llama-cpp.sh installs it and keeps its source release


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shipyard"


def llama_cpp_sdist(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """llama-cpp-python's source release (its vendored llama.cpp: converter, headers), as
    scripts/llama-cpp.sh keeps it."""
    return cache_root() / f"llama-cpp-python-{version}" / f"llama_cpp_python-{version}.tar.gz"
