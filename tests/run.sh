#!/usr/bin/env bash
# Runs every test from a fresh clone on Debian with Rust (rustup):
# installs the wasm targets and the pinned Python reference tools, fetches the
# MiniLM models and ONNX Runtime's library for the native backend (pinned,
# sha256-checked), builds the plugins and the host once (one profile), then
# runs formatting, lint, all tests and a short fuzzing smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/python-env.sh

step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }

step "toolchain targets"
rustup target add wasm32-wasip2 wasm32-wasip1
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "servers the tests start on loopback (Debian packages, installed when missing)"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "python reference environment (target/py)"
python_env
target/py/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "models"
target/py/bin/python host/pipelines/minilm/fetch_models.py
target/py/bin/python host/onnxruntime/fetch.py target/onnxruntime

step "plugins"
cargo plugins
cargo plugins-wasip1

step "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The host without the native backend (pure Rust, tract only) must build too.
cargo clippy -p outpost-host --no-default-features --all-targets -- -D warnings
cargo clippy --target wasm32-wasip2 -p outpost-guest -p bert-tokenizer -p infer -p mean-pool \
    -p classify -p image-normalize -p fail -p hostile -p echo -- -D warnings
cargo clippy --target wasm32-wasip1 -p wasi-nn-classic -- -D warnings

step "build the host"
cargo build -p outpost-host --bins

step "tests"
export OUTPOST_PYTHON="$PWD/target/py/bin/python"
export OUTPOST_ONNXRUNTIME_LIB="$PWD/target/onnxruntime/libonnxruntime.so"
cargo test --workspace --exclude wasi-nn-classic
step "the benchmark, short (dev profile: checks it runs, measures nothing)"
cargo bench -p outpost-host --bench outpost --profile dev -- --quick --json target/bench/quick.json
cargo bench -p outpost-host --bench serve --profile dev -- --quick --json target/bench/serve-quick.json

step "fuzzing, short: every signing parser for 10 s (nightly + cargo-fuzz, installed when missing)"
bash tests/fuzz.sh 10 signing

step "the compiler-less host runs precompiled bundles, and only those"
bash tests/precompile/run.sh

step "the Debian package: lintian, install, the unit, serve as the service, purge"
bash tests/package/run.sh

step "the README's demo, signed"
bash host/pipelines/demo/signed-demo.sh "stop the conveyor" | grep -q stop_conveyor
step "done"
