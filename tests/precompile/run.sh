#!/usr/bin/env bash
# The compiler-less host: `outpost` built without Cranelift and without
# ONNX Runtime (`--no-default-features`), as small devices install it. It
# runs only what bundles carry precompiled for it, and only where the
# device policy allows native code from publishers.
#   - a bundle the full host signed with `--precompile <this target>` runs,
#     every stage from its artifact, with the full host's exact outputs
#     (demo and MiniLM-L3), also under `ulimit -v 2000000`, where the
#     explicit-bounds artifact is the one that matches;
#   - without the policy, without an artifact for this target, or with an
#     engine no artifact matches (fuel), it refuses with an error that says
#     what to change, and never crashes;
#   - it cannot compile: `bundle --precompile` and `exec` say so.
#
#   bash tests/precompile/run.sh
#
# Builds both hosts (debug profile, as the tests do); the compiler-less one
# is kept at target/nocompiler/outpost.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "the compiler-less host, then the full host (one target directory)"
cargo build --quiet -p outpost-host --no-default-features --bin outpost
mkdir -p target/nocompiler
cp target/debug/outpost target/nocompiler/outpost
cargo build --quiet -p outpost-host --bin outpost
cargo plugins --quiet
full() { target/debug/outpost "$@"; }
small() { target/nocompiler/outpost "$@"; }
triple=$(full --version | sed -n "s/^target: //p")
[ -n "$triple" ] || fail "outpost --version --verbose does not name its target"
strip -o target/nocompiler/outpost.stripped target/nocompiler/outpost
strip -o target/nocompiler/full.stripped target/debug/outpost
echo "stripped (debug profile): full $(stat -c %s target/nocompiler/full.stripped) bytes, compiler-less $(stat -c %s target/nocompiler/outpost.stripped) bytes"

python=${OUTPOST_PYTHON:-target/py/bin/python}
"$python" host/pipelines/minilm/fetch_models.py >/dev/null

work=target/nocompiler/work
rm -rf "$work" && mkdir -p "$work"
step "a publisher signs the demo and MiniLM-L3 precompiled for $triple"
full keygen --out "$work/publisher.key" >/dev/null
full root --key "$work/publisher.key.pub" --threshold 1 --expires 2099-01-01T00:00:00Z \
    --sign "$work/publisher.key" --out "$work/root.json" >/dev/null
bundle() { # NAME PIPELINE [bundle args]
    local name=$1 pipeline=$2
    shift 2
    full bundle "$pipeline" --name "$name" --version 1 --out "$work/$name" "$@" >/dev/null
    full sign "$work/$name" --key "$work/publisher.key" >/dev/null
}
bundle demo host/pipelines/demo/intent.toml --precompile "$triple"
bundle minilm-l3 host/pipelines/minilm/minilm-l3.toml --precompile "$triple"
bundle demo-plain host/pipelines/demo/intent.toml
other=aarch64-unknown-linux-gnu
[ "${triple%%-*}" = aarch64 ] && other=x86_64-unknown-linux-gnu
bundle demo-other host/pipelines/demo/intent.toml --precompile "$other"
printf '[precompiled]\nallow = true\n' >"$work/allow.toml"
printf '# nothing allowed\n' >"$work/deny.toml"

# run HOST BUNDLE POLICY [engine flags...] -> stdout; stderr to $work/err
run() {
    local host=$1 name=$2 policy=$3
    shift 3
    "$host" "$@" run "$work/$name" --trust "$work/root.json" --state-dir "$work/state-$host" \
        --no-cache --policy "$work/$policy.toml" -i "stop the conveyor" -i "Café crème, naïve façade: déjà vu!" \
        2>"$work/err"
}
expect_refusal() { # what needle... (after a run that must fail)
    local what=$1
    shift
    for needle in "$@"; do
        grep -qF -- "$needle" "$work/err" || { cat "$work/err" >&2; fail "$what: stderr lacks '$needle'"; }
    done
}

step "the compiler-less host runs them from their artifacts, with the full host's outputs"
for name in demo minilm-l3; do
    run full "$name" deny >"$work/$name.full.json" || { cat "$work/err" >&2; fail "full host, $name"; }
    run small "$name" allow >"$work/$name.small.json" || { cat "$work/err" >&2; fail "compiler-less host, $name"; }
    small inspect "$work/$name" --trust "$work/root.json" --state-dir "$work/state-small" \
        --no-cache --policy "$work/allow.toml" >"$work/$name.inspect.json"
    "$python" - "$work" "$name" <<'PY'
import json, sys
work, name = sys.argv[1], sys.argv[2]
load = lambda f: json.load(open(f"{work}/{f}"))
full, small = load(f"{name}.full.json"), load(f"{name}.small.json")
assert [r["outputs"] for r in full["results"]] == [r["outputs"] for r in small["results"]], (full, small)
stages = load(f"{name}.inspect.json")["stages"]
assert stages and all(s["code"].startswith("precompiled sha256:") for s in stages), stages
print(f"{name}: {len(full['results'])} outputs identical; stages {[s['name'] for s in stages]} all precompiled")
PY
done

step "under ulimit -v 2000000 the explicit-bounds artifact is used"
(ulimit -v 2000000 && run small demo allow -v) >"$work/demo.small-2g.json" ||
    { cat "$work/err" >&2; fail "compiler-less host under 2 GB"; }
grep -q "explicit bounds checks" "$work/err" || { cat "$work/err" >&2; fail "the 2 GB run did not use explicit checks"; }
"$python" -c '
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
assert [r["outputs"] for r in a["results"]] == [r["outputs"] for r in b["results"]]
' "$work/demo.small-2g.json" "$work/demo.full.json" || fail "outputs under 2 GB differ"

step "refusals say what to change"
if run small demo deny; then fail "ran native code the policy does not allow"; fi
expect_refusal "no consent" "has no compiler" "[precompiled] allow = true"
! grep -qF "carries it precompiled only" "$work/err" || fail "without consent the error lists artifacts: $(cat "$work/err")"
if run small demo-plain allow; then fail "ran a bundle without artifacts"; fi
expect_refusal "no artifact" "no precompiled artifact for $triple" "outpost bundle --precompile $triple"
if run small demo-other allow; then fail "ran a bundle with artifacts for $other only"; fi
expect_refusal "another target" "carries it precompiled only for $other"
if run small demo allow --fuel; then fail "ran an artifact compiled without fuel on a fuel engine"; fi
expect_refusal "fuel" "guard-pages epochs fuel" "start the host without fuel" "carries it precompiled only for $triple (wasmtime-"
if small bundle host/pipelines/demo/intent.toml --name x --version 1 --out "$work/x" \
    --precompile "$triple" 2>"$work/err"; then
    fail "the compiler-less host compiled"
fi
expect_refusal "bundle --precompile" "needs a compiler"
if small exec "$(ls target/wasm32-wasip1/*/wasi_nn_classic.wasm 2>/dev/null | head -1 || echo none.wasm)" 2>"$work/err"; then
    fail "the compiler-less host ran a core module"
fi
grep -qF "no compiler" "$work/err" || grep -qF "cannot read" "$work/err" || { cat "$work/err" >&2; fail "exec"; }

echo
echo "compiler-less host: all checks passed (at ${SECONDS}s)"
