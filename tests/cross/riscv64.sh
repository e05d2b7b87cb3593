#!/usr/bin/env bash
# The compiler-less host on 64-bit RISC-V: bundles that a publisher on x86_64
# signed with `--precompile riscv64gc-unknown-linux-gnu` are verified and run,
# under qemu-riscv64, by the host built without Cranelift and without ONNX
# Runtime (`--no-default-features`), as a RISC-V board would install it.
#   - every stage runs from its signed artifact (`outpost inspect` says
#     `precompiled` for each), with the policy's consent;
#   - the tokenizer's ids and the demo's labels are bit-identical to the
#     x86_64 host's; MiniLM embeddings agree at cosine >= 0.9999;
#   - a bundle without riscv64 artifacts is refused with the rebuild command;
#   - riscv64 artifacts use the vector extension (RVV 1.0: Cranelift emits
#     wasm's 128-bit values only as vector code): the host runs them on a
#     CPU with V (qemu `-cpu rv64,v=true`) and, on a CPU without it, refuses
#     them with an error naming the extension instead of dying on an illegal
#     instruction (wasmtime does not check riscv64 CPU features itself).
#
#   bash tests/cross/riscv64.sh
#
# Installs what it needs when missing (Debian: gcc-riscv64-linux-gnu,
# qemu-user; rustup: the riscv64 target), cross-builds the compiler-less
# host in release (about 20 minutes on 2 cores the first time), and writes
# the comparison to target/cross-riscv64/report.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
triple=riscv64gc-unknown-linux-gnu
sysroot=/usr/riscv64-linux-gnu

step "tools"
missing=()
command -v riscv64-linux-gnu-gcc >/dev/null || missing+=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)
command -v qemu-riscv64 >/dev/null || missing+=(qemu-user)
if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target add "$triple" wasm32-wasip2 >/dev/null

step "the x86_64 host (publisher), the plugins, and the compiler-less riscv64 host"
cargo plugins --quiet
cargo build --quiet -p outpost-host --bin outpost
cargo build --quiet --release --target "$triple" -p outpost-host --no-default-features --bin outpost
bin="target/$triple/release/outpost"
x86() { target/debug/outpost "$@"; }
rv() { QEMU_CPU=rv64,v=true,vext_spec=v1.0 qemu-riscv64 -L "$sysroot" "$bin" "$@"; }
rv_no_vector() { QEMU_CPU=rv64,v=false qemu-riscv64 -L "$sysroot" "$bin" "$@"; }
file -L "$bin" | grep -q "RISC-V" || fail "$bin is not a RISC-V binary"
rv --version | tee /dev/stderr | grep -q "^target: $triple" || fail "the riscv64 host does not name $triple"
rv --version | grep -q cranelift && fail "the riscv64 host was built with a compiler"

step "models"
python=${OUTPOST_PYTHON:-target/py/bin/python}
"$python" host/pipelines/minilm/fetch_models.py >/dev/null

work=target/cross-riscv64
rm -rf "$work" && mkdir -p "$work"

step "a publisher on x86_64 signs the bundles, precompiled for $triple"
x86 keygen --out "$work/publisher.key" >/dev/null
x86 root --key "$work/publisher.key.pub" --threshold 1 --expires 2099-01-01T00:00:00Z \
    --sign "$work/publisher.key" --out "$work/root.json" >/dev/null
bundle() { # NAME PIPELINE [bundle args]
    local name=$1 pipeline=$2
    shift 2
    x86 bundle "$pipeline" --name "$name" --version 1 --out "$work/$name" "$@" >/dev/null
    x86 sign "$work/$name" --key "$work/publisher.key" >/dev/null
    x86 pack "$work/$name" --out "$work/$name.bundle" >/dev/null
}
names=(intent-demo tokenize minilm-l3 minilm-l6-int8)
bundle intent-demo host/pipelines/demo/intent.toml --precompile "$triple"
bundle tokenize tests/cross/tokenize.toml --precompile "$triple"
bundle minilm-l3 host/pipelines/minilm/minilm-l3.toml --precompile "$triple"
bundle minilm-l6-int8 host/pipelines/minilm/minilm-l6-int8.toml --precompile "$triple"
bundle plain host/pipelines/demo/intent.toml
printf '[precompiled]\nallow = true\n' >"$work/allow.toml"

texts=(
    "stop the conveyor"
    "fly to the red building and land"
    "Café crème, naïve façade: déjà vu!"
    "東京の天気は晴れです"
    "emoji 🚀🔥 and code: fn main() { println!(\"hi\"); }"
    "A man is eating food."
)
inputs=()
for t in "${texts[@]}"; do inputs+=(--input "$t"); done

step "x86_64 runs them (tract, compiled here)"
for name in "${names[@]}"; do
    x86 run "$work/$name.bundle" --trust "$work/root.json" --state-dir "$work/x86-state" \
        "${inputs[@]}" >"$work/x86_64-$name.json"
done

step "riscv64 runs the same bundles under qemu, every stage from its artifact"
for name in "${names[@]}"; do
    rv inspect "$work/$name.bundle" --trust "$work/root.json" --state-dir "$work/rv-state" \
        --policy "$work/allow.toml" >"$work/riscv64-inspect-$name.json"
    "$python" - "$work/riscv64-inspect-$name.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
codes = [s["code"] for s in doc["stages"]]
if not codes or not all(c.startswith("precompiled sha256:") for c in codes):
    sys.exit(f"{sys.argv[1]}: not every stage runs from an artifact: {codes}")
EOF
    rv run "$work/$name.bundle" --trust "$work/root.json" --state-dir "$work/rv-state" \
        --policy "$work/allow.toml" "${inputs[@]}" >"$work/riscv64-$name.json"
done

step "without riscv64 artifacts the compiler-less host refuses, and says what to rebuild"
if rv run "$work/plain.bundle" --trust "$work/root.json" --state-dir "$work/rv-state" \
    --policy "$work/allow.toml" --input "stop the conveyor" >/dev/null 2>"$work/plain.err"; then
    fail "the compiler-less host ran a bundle without artifacts"
fi
grep -q -- "--precompile $triple" "$work/plain.err" || { cat "$work/plain.err" >&2; fail "the refusal does not name the rebuild"; }

step "a riscv64 CPU without the vector extension refuses the artifacts, and says why"
if rv_no_vector run "$work/intent-demo.bundle" --trust "$work/root.json" --state-dir "$work/rv-state" \
    --policy "$work/allow.toml" --input "stop the conveyor" >/dev/null 2>"$work/no-vector.err"; then
    fail "a CPU without V ran artifacts compiled for V"
fi
grep -q "vector extension (RVV 1.0)" "$work/no-vector.err" || { cat "$work/no-vector.err" >&2; fail "the refusal does not name the vector extension"; }

step "compare"
"$python" tests/cross/compare.py "$work" false riscv64
