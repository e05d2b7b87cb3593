#!/usr/bin/env bash
# One signed bundle, every device: bundles built and signed on x86_64 are
# verified and run by the aarch64 host under qemu-user, and their outputs
# compared with the x86_64 host's.
#   - the tokenizer's ids and the demo's labels are bit-identical;
#   - MiniLM embeddings agree at cosine >= 0.9999 (float kernels differ);
#   - each host keeps its own precompiled cache (STATE/cache/<arch>-...), and
#     an x86_64 artifact planted where aarch64 looks is refused, not run;
#   - with --onnxruntime, the same on ONNX Runtime's aarch64 library (the
#     pinned wheel's, host/onnxruntime/fetch.py --platform aarch64).
#
#   bash tests/cross/run.sh [--onnxruntime]
#
# Installs what it needs when missing (Debian: gcc-aarch64-linux-gnu,
# qemu-user; rustup: the aarch64 target), cross-builds the host in release
# (about 30 minutes on 2 cores the first time), and writes the comparison to
# target/cross/report.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

onnxruntime=false
for arg in "$@"; do
    case "$arg" in
        --onnxruntime) onnxruntime=true ;;
        *) echo "tests/cross/run.sh: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }
triple=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

step "tools"
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
[ -e "$sysroot/lib/libstdc++.so.6" ] || missing+=(libstdc++6-arm64-cross)
if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target add "$triple" wasm32-wasip2 >/dev/null

step "the x86_64 host, the plugins, and the aarch64 host (release, cross-built)"
cargo plugins --quiet
cargo build --quiet -p outpost-host --bin outpost
cargo build --quiet --release --target "$triple" -p outpost-host --bin outpost
x86() { target/debug/outpost "$@"; }
arm() { qemu-aarch64 -L "$sysroot" "target/$triple/release/outpost" "$@"; }
arm --version >/dev/null
file -L "target/$triple/release/outpost" | grep -q "ARM aarch64" ||
    { echo "target/$triple/release/outpost is not an aarch64 binary" >&2; exit 1; }

step "models"
python=${OUTPOST_PYTHON:-target/py/bin/python}
"$python" host/pipelines/minilm/fetch_models.py >/dev/null

work=target/cross
rm -rf "$work" && mkdir -p "$work"

step "a publisher on x86_64 signs the bundles"
x86 keygen --out "$work/publisher.key" >/dev/null
x86 root --key "$work/publisher.key.pub" --threshold 1 --expires 2030-01-01T00:00:00Z \
    --sign "$work/publisher.key" --out "$work/root.json" >/dev/null
bundle() { # NAME PIPELINE
    x86 bundle "$2" --name "$1" --version 1 --out "$work/$1" >/dev/null
    x86 sign "$work/$1" --key "$work/publisher.key" >/dev/null
    x86 pack "$work/$1" --out "$work/$1.bundle" >/dev/null
}
bundle intent-demo host/pipelines/demo/intent.toml
bundle tokenize tests/cross/tokenize.toml
bundle minilm-l3 host/pipelines/minilm/minilm-l3.toml
bundle minilm-l6-int8 host/pipelines/minilm/minilm-l6-int8.toml

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

run_all() { # HOST STATE-DIR OUT-PREFIX [FLAGS...]
    local host=$1 state=$2 prefix=$3
    shift 3
    for name in intent-demo tokenize minilm-l3 minilm-l6-int8; do
        "$host" run "$work/$name.bundle" --trust "$work/root.json" --state-dir "$state" \
            "$@" "${inputs[@]}" >"$prefix-$name.json"
    done
}

step "x86_64 runs them (tract)"
run_all x86 "$work/device" "$work/x86_64"
step "aarch64 runs the same bundles under qemu (tract), with the same state directory"
run_all arm "$work/device" "$work/aarch64"

step "each architecture compiled into its own cache"
ls "$work/device/cache" >"$work/cache-dirs.txt"
grep -q '^x86_64-linux-' "$work/cache-dirs.txt" && grep -q '^aarch64-linux-' "$work/cache-dirs.txt" ||
    { echo "expected one x86_64 and one aarch64 cache directory, found:" >&2; cat "$work/cache-dirs.txt" >&2; exit 1; }

step "an x86_64 artifact planted in the aarch64 cache is refused and recompiled, not loaded"
x86_dir=$(ls -d "$work/device/cache"/x86_64-linux-*)
arm_dir=$(ls -d "$work/device/cache"/aarch64-linux-*)
planted=0
for f in "$x86_dir"/*.cwasm; do
    if [ -e "$arm_dir/$(basename "$f")" ]; then
        cp "$f" "$arm_dir/$(basename "$f")"
        planted=$((planted + 1))
    fi
done
[ "$planted" -gt 0 ] || { echo "no cached component is named alike in both caches" >&2; exit 1; }
# Every bundle again, so every planted artifact is looked up.
for name in intent-demo tokenize minilm-l3 minilm-l6-int8; do
    arm run "$work/$name.bundle" --state-dir "$work/device" --input "stop the conveyor" \
        >"$work/aarch64-planted-$name.json"
done
for f in "$arm_dir"/*.cwasm; do
    if cmp -s "$f" "$x86_dir/$(basename "$f")"; then
        echo "the aarch64 cache still holds a planted x86_64 artifact: $f" >&2
        exit 1
    fi
done

if $onnxruntime; then
    step "ONNX Runtime: the pinned wheel's aarch64 library, under qemu"
    "$python" host/onnxruntime/fetch.py --platform aarch64 target/onnxruntime-aarch64
    ort=(--backend onnxruntime --onnxruntime-lib target/onnxruntime-aarch64/libonnxruntime.so)
    for name in minilm-l3 minilm-l6-int8; do
        arm run "$work/$name.bundle" --state-dir "$work/device" "${ort[@]}" "${inputs[@]}" \
            >"$work/aarch64-ort-$name.json"
    done
fi

step "compare"
"$python" tests/cross/compare.py "$work" "$onnxruntime"
