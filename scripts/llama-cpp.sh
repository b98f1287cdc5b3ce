#!/usr/bin/env bash
# Install llama-cpp-python[server] into the venv from a wheel cached under ~/.cache, keyed by
# version. Its PyPI release is a source build (8-15 minutes on 2 cores): build it once, when the
# cache lacks it, and never again. The sdist is kept too: its vendored llama.cpp carries
# convert_hf_to_gguf.py and the gguf package that GGUF conversion runs (shipyard.optimize.gguf).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PIP="${1:?usage: llama-cpp.sh VENV_BIN}/pip"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/shipyard"
WHEELS="$CACHE/wheels/llama-cpp-python-$VERSION"
SDIST_DIR="$CACHE/llama-cpp-python-$VERSION"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"

mkdir -p "$WHEELS" "$SDIST_DIR"
if [ ! -f "$SDIST" ]; then
  echo "llama-cpp-python $VERSION: downloading the source release"
  "$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
fi
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "llama-cpp-python $VERSION: building the wheel once (8-15 minutes; cached in $WHEELS)"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF}" \
    nice "$PIP" wheel --quiet --no-deps "$SDIST" -w "$WHEELS"
fi
if [ ! -f "$SDIST_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  tar xzf "$SDIST" -C "$SDIST_DIR" --wildcards \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion/*" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py/*"
fi
# gguf from the same sources: the format reader matching this llama.cpp (and the converter's)
"$PIP" install --quiet --only-binary llama-cpp-python --find-links "$WHEELS" "llama-cpp-python[server]==$VERSION" \
  "$SDIST_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py"
