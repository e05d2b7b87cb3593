#!/usr/bin/env bash
# The benchmark, from a fresh clone on Debian with Rust (rustup): fetches the
# pinned MiniLM models and ONNX Runtime's library (sha256-checked), builds the
# plugins, then runs `cargo bench` (release build). Arguments go to the
# benchmark: --quick for a short run, --json PATH for where results go
# (default target/bench/outpost.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/python-env.sh

rustup target add wasm32-wasip2
python_env
target/py/bin/python host/pipelines/minilm/fetch_models.py
target/py/bin/python host/onnxruntime/fetch.py target/onnxruntime
cargo plugins
OUTPOST_ONNXRUNTIME_LIB="$PWD/target/onnxruntime/libonnxruntime.so" \
    cargo bench -p outpost-host --bench outpost -- "$@"
