#!/usr/bin/env bash
# The demo as a fleet would run it: a publisher key and trust root, the demo
# pipeline bundled and signed, verified, then run on the "device" from the
# signed bundle. Everything goes to target/demo-trust/ (made anew each time).
#
#   bash host/pipelines/demo/signed-demo.sh "stop the conveyor" ["fly to the red building" ...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ $# -gt 0 ] || set -- "stop the conveyor"

cargo plugins --quiet
cargo build --quiet -p outpost-host
outpost() { target/debug/outpost "$@"; }

work=target/demo-trust
rm -rf "$work" && mkdir -p "$work"

echo "== 1. the publisher makes a key and a trust root for its devices" >&2
outpost keygen --out "$work/publisher.key" >&2
outpost root --key "$work/publisher.key.pub" --threshold 1 --expires 2030-01-01T00:00:00Z \
    --sign "$work/publisher.key" --out "$work/root.json" >&2

echo "== 2. bundles the pipeline (models, components, files by sha256) and signs it" >&2
outpost bundle host/pipelines/demo/intent.toml --name intent-demo --version 1 --out "$work/intent-demo" >&2
outpost sign "$work/intent-demo" --key "$work/publisher.key" >&2
outpost pack "$work/intent-demo" --out "$work/intent-demo.bundle" >&2

echo "== 3. the device verifies the bundle against its trust root" >&2
outpost verify "$work/intent-demo.bundle" --trust "$work/root.json" --state-dir "$work/device" >&2

echo "== 4. and runs it" >&2
args=()
for text in "$@"; do args+=(--input "$text"); done
outpost run "$work/intent-demo.bundle" --trust "$work/root.json" --state-dir "$work/device" "${args[@]}"
