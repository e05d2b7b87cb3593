#!/usr/bin/env bash
# MiniLM on an NVIDIA GPU: the same pipelines with `target = "gpu"`, through
# ONNX Runtime's CUDA provider (and TensorRT's where the library has it),
# against the CPU. Checks that a GPU provider was registered and that the
# embeddings agree with the CPU's at cosine >= 0.9999; reports latency.
# Never part of CI (no GPU there); run it by hand where a GPU is:
#
#   bash tests/gpu/run.sh
#
# Needs: an NVIDIA driver (nvidia-smi), Python 3, and the onnxruntime-gpu
# wheel with the CUDA and cuDNN wheels it names (pinned below; from PyPI, or
# from a folder of downloaded wheels given as OUTPOST_GPU_WHEELS for machines
# without network). Exits 2 when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

ORT_GPU_VERSION=1.31.1
requests=${OUTPOST_GPU_REQUESTS:-64}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "tests/gpu/run.sh: no NVIDIA GPU here (nvidia-smi finds none); nothing to run" >&2
    exit 2
fi
step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }
step "the GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "onnxruntime-gpu $ORT_GPU_VERSION and the CUDA libraries it needs (target/gpu-py)"
python3 -m venv target/gpu-py
pip=(target/gpu-py/bin/pip install --quiet --disable-pip-version-check)
if [ -n "${OUTPOST_GPU_WHEELS:-}" ]; then
    pip+=(--no-index --find-links "$OUTPOST_GPU_WHEELS")
fi
"${pip[@]}" "onnxruntime-gpu[cuda,cudnn]==$ORT_GPU_VERSION" numpy
py=target/gpu-py/bin/python
capi=$("$py" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
library="$capi/libonnxruntime.so.$ORT_GPU_VERSION"
[ -f "$library" ] || { echo "no $library in the wheel" >&2; exit 1; }
# The CUDA, cuBLAS and cuDNN wheels put their libraries under nvidia/*/lib.
nvidia_libs=$("$py" - <<'EOF'
import glob, os, site
dirs = []
for root in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH="$capi:$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

step "the host, the plugins and the models"
if [ ! -x target/debug/outpost ]; then
    cargo plugins --quiet
    cargo build --quiet -p outpost-host --bin outpost
fi
for f in host/pipelines/minilm/fetched/minilm-l3.onnx host/pipelines/minilm/fetched/minilm-l6-int8.onnx; do
    [ -f "$f" ] || python3 host/pipelines/minilm/fetch_models.py
done

work=target/gpu
rm -rf "$work" && mkdir -p "$work"
made=()
trap 'rm -f "${made[@]}"' EXIT
texts=()
for i in $(seq 1 "$requests"); do
    texts+=(--input "Request $i: the conveyor on line $((i % 7)) stopped after the sensor reported $((i * 13 % 101)) degrees.")
done

for name in minilm-l3 minilm-l6-int8; do
    # The pipeline as published, with the model moved to the GPU; beside the
    # original so its relative paths hold.
    gpu_toml="host/pipelines/minilm/$name.gpu.toml"
    made+=("$gpu_toml")
    awk '{print} /^\[models\.minilm\]$/ {print "backend = \"onnxruntime\""; print "target = \"gpu\""}' \
        "host/pipelines/minilm/$name.toml" >"$gpu_toml"
    grep -q '^target = "gpu"' "$gpu_toml" || { echo "$name.toml has no [models.minilm] table" >&2; exit 1; }

    step "$name: providers"
    target/debug/outpost inspect --insecure-unsigned "$gpu_toml" --onnxruntime-lib "$library" \
        | tee "$work/$name-inspect.txt" | grep -i -E "onnxruntime|provider" || true
    grep -q -E "CUDAExecutionProvider|TensorrtExecutionProvider" "$work/$name-inspect.txt" ||
        { echo "$name: no GPU provider registered (see $work/$name-inspect.txt)" >&2; exit 1; }

    step "$name: $requests requests on the CPU and on the GPU"
    target/debug/outpost run --insecure-unsigned "host/pipelines/minilm/$name.toml" \
        --backend onnxruntime --onnxruntime-lib "$library" "${texts[@]}" >"$work/$name-cpu.json"
    target/debug/outpost run --insecure-unsigned "$gpu_toml" \
        --onnxruntime-lib "$library" "${texts[@]}" >"$work/$name-gpu.json"
done

step "compare"
"$py" - "$work" <<'EOF'
import json, math, statistics, sys
from pathlib import Path
work = Path(sys.argv[1])
failed = False
print(f"{'pipeline':<16} {'min cosine':>12} {'cpu p50 ms':>11} {'gpu p50 ms':>11} {'gpu/cpu':>8}")
for name in ["minilm-l3", "minilm-l6-int8"]:
    cpu = json.loads((work / f"{name}-cpu.json").read_text())["results"]
    gpu = json.loads((work / f"{name}-gpu.json").read_text())["results"]
    cosines = []
    for c, g in zip(cpu, gpu):
        a, b = c["outputs"]["sentence_embedding"]["data"], g["outputs"]["sentence_embedding"]["data"]
        dot = sum(x * y for x, y in zip(a, b))
        cosines.append(dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))
    # The first request of each run builds the session's kernels: left out.
    cpu_ms = statistics.median(r["latency_ms"] for r in cpu[1:])
    gpu_ms = statistics.median(r["latency_ms"] for r in gpu[1:])
    worst = min(cosines)
    print(f"{name:<16} {worst:>12.8f} {cpu_ms:>11.2f} {gpu_ms:>11.2f} {gpu_ms / cpu_ms:>8.3f}")
    if len(cpu) != len(gpu) or worst < 0.9999:
        print(f"FAIL: {name}: cosine {worst} < 0.9999", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
EOF
