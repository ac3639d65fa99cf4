#!/usr/bin/env bash
# Build llama.cpp's `llama-completion`, `llama-cvector-generator` and `llama-server` (the OpenAI-compatible endpoint
# the LLM judge's slow tier talks to: tests/test_judge_server.py) once into a cache outside the clone, keyed by version.
# The llama.cpp tree ships inside PyPI's llama-cpp-python source distribution (vendor/llama.cpp),
# so this needs only pip, cmake and the machine's C/C++ compilers. Idempotent: a finished build is reused.
# Usage: peers/build_llamacpp.sh [VERSION]   (prints the binary's path on the last line)
set -euo pipefail
VERSION="${1:-${LLAMACPP_PY_VERSION:-0.3.36}}"
CACHE="${STEERLAB_CACHE:-$HOME/.cache/steerlab}"
DEST="$CACHE/llama.cpp-$VERSION"
BIN="$DEST/build/bin/llama-completion"
JOBS="${LLAMACPP_JOBS:-2}"
PY="${PY:-$(dirname "$0")/../.venv/bin/python}"
# The sdist's pure-Python bindings (llama_cpp/) go to $DEST/python: peers/llamacpp_logits.py reads logits through
# them with LLAMA_CPP_LIB_PATH=$DEST/build/bin (same version as the C library, nothing else compiled).
GEN="$DEST/build/bin/llama-cvector-generator"
SERVER="$DEST/build/bin/llama-server"
if [ -x "$BIN" ] && [ -x "$GEN" ] && [ -x "$SERVER" ] && [ -d "$DEST/python/llama_cpp" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE/src"
SDIST="$CACHE/src/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/src" >&2
fi
if [ ! -f "$DEST/CMakeLists.txt" ] || [ ! -d "$DEST/python/llama_cpp" ]; then
    TMP="$(mktemp -d "$CACHE/extract.XXXXXX")"
    tar -xzf "$SDIST" -C "$TMP"
    if [ ! -f "$DEST/CMakeLists.txt" ]; then
        rm -rf "$DEST"
        mv "$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp" "$DEST"
    fi
    mkdir -p "$DEST/python"
    rm -rf "$DEST/python/llama_cpp"
    mv "$TMP/llama_cpp_python-$VERSION/llama_cpp" "$DEST/python/llama_cpp"
    rm -rf "$TMP"
fi
if [ -x "$BIN" ] && [ -x "$GEN" ] && [ -x "$SERVER" ]; then echo "$BIN"; exit 0; fi
cd "$DEST"
# the server without its web UI: no npm build and no download of prebuilt UI assets (the judge needs only the API)
cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >&2
cmake --build build --target llama-completion llama-cvector-generator llama-server -j "$JOBS" >&2
echo "$BIN"
