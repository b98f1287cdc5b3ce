#!/usr/bin/env bash
# llama.cpp's own C++ server, built once from the llama.cpp that llama-cpp-python vendors (the
# same sources as the in-process engine), cached under ~/.cache by that version. Prints its path.
# bench/optimization.py measures Shipyard's CPU path against it.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/shipyard"
SDIST_DIR="$CACHE/llama-cpp-python-$VERSION"
SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
OUT="$CACHE/llama-server-$VERSION"
if [ -x "$OUT/bin/llama-server" ]; then
  echo "$OUT/bin/llama-server"
  exit 0
fi
[ -f "$SDIST" ] || { echo "no llama-cpp-python sdist at $SDIST: run scripts/llama-cpp.sh first" >&2; exit 1; }
command -v cmake >/dev/null || { echo "cmake is needed (pip install cmake, or apt-get install cmake)" >&2; exit 1; }
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
tar xzf "$SDIST" -C "$SRC" "llama_cpp_python-$VERSION/vendor/llama.cpp"
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
echo "llama.cpp (llama-cpp-python $VERSION): building llama-server once (cached in $OUT)" >&2
cmake -S "$LLAMA" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
nice cmake --build "$SRC/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT/bin"
cp "$SRC/build/bin/llama-server" "$OUT/bin/llama-server"
echo "$OUT/bin/llama-server"
