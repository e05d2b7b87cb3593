#!/usr/bin/env bash
# Builds the stages written in C, Python and JavaScript into
# target/wasm32-wasip2/plugin/, beside the Rust ones (`cargo plugins`):
#
#   c_classify.wasm    plugins/c-classify     (clang + wasi-libc, outpost-guest-c)
#   py_classify.wasm   plugins/py-classify    (componentize-py)
#   js_classify.wasm   plugins/js-classify    (componentize-js)
#   py_hostile.wasm, js_hostile.wasm          tests/plugins/{py,js}-hostile
#
# Usage: bash plugins/languages.sh [c] [python] [js]   (all three by default)
#
# Installs what is missing, pinned: Debian's clang, lld, wasi-libc and the
# wasm32 compiler runtime (as root, or with sudo); componentize-py into
# target/py (tests/requirements.txt); componentize-js into
# target/js-toolchain (plugins/js-toolchain/package-lock.json, `npm ci`).
# Every tool works offline once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/wasm32-wasip2/plugin
mkdir -p "$out"
langs=("$@")
[ "${#langs[@]}" -gt 0 ] || langs=(c python js)

step() { printf '  %s (at %ds)\n' "$*" "$SECONDS"; }

apt_install() {
    local as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

c_toolchain() {
    local missing=()
    command -v clang >/dev/null || missing+=(clang)
    command -v wasm-ld >/dev/null || missing+=(lld)
    [ -f /usr/lib/wasm32-wasi/libc.a ] || missing+=(wasi-libc)
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
    # The wasm32 compiler runtime of the clang that is there.
    if ! [ -f "$(clang -print-resource-dir)/lib/wasi/libclang_rt.builtins-wasm32.a" ]; then
        apt_install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev-wasm32"
    fi
}

# A C stage: its .c files with the SDK and the generated bindings, linked
# as a reactor (no main), then made a component.
c_stage() {
    local name=$1 dir=$2 build=target/c-stages/$1
    mkdir -p "$build"
    clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror -I target/c-stages/sdk \
        "$dir"/*.c target/c-stages/sdk/outpost.c target/c-stages/sdk/stage.c \
        target/c-stages/sdk/stage_component_type.o \
        -mexec-model=reactor -Wl,--strip-debug -o "$build/core.wasm"
    target/c-stages/outpost-guest-c componentize "$build/core.wasm" --out "$out/$name.wasm"
}

build_c() {
    step "C: toolchain"
    c_toolchain
    step "C: outpost-guest-c, bindings and SDK"
    cargo build --quiet -p outpost-guest-c
    mkdir -p target/c-stages
    cp target/debug/outpost-guest-c target/c-stages/
    target/c-stages/outpost-guest-c bindings --out target/c-stages/sdk
    step "C: stages"
    c_stage c_classify plugins/c-classify
}

py_toolchain() {
    if ! [ -x target/py/bin/componentize-py ]; then
        source tests/python-env.sh
        python_env
        target/py/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    fi
}

py_stage() {
    local name=$1 dir=$2
    target/py/bin/componentize-py -d wit -w streaming-stage componentize app \
        -p "$dir" -p guest-sdk/python -o "$out/$name.wasm" >/dev/null
}

build_python() {
    step "Python: toolchain"
    py_toolchain
    step "Python: stages"
    py_stage py_classify plugins/py-classify
    py_stage py_hostile tests/plugins/py-hostile
}

js_toolchain() {
    local tools=target/js-toolchain
    if ! cmp -s plugins/js-toolchain/package-lock.json "$tools/package-lock.json" ||
        ! [ -x "$tools/node_modules/.bin/componentize-js" ]; then
        mkdir -p "$tools"
        cp plugins/js-toolchain/package.json plugins/js-toolchain/package-lock.json "$tools/"
        (cd "$tools" && npm ci --quiet --no-audit --no-fund)
    fi
}

# A JS stage: its module beside the SDK's (it imports './outpost-guest.js').
js_stage() {
    local name=$1 file=$2 build=target/js-stages/$1
    mkdir -p "$build"
    cp "$file" guest-sdk/js/outpost-guest.js "$build/"
    # No http, fetch or clocks: the host serves none of the first two, and
    # a stage has no use for a clock that stands still without a grant.
    target/js-toolchain/node_modules/.bin/componentize-js "$build/$(basename "$file")" \
        --wit wit --world-name streaming-stage -d http fetch-event clocks -o "$out/$name.wasm" >/dev/null
}

build_js() {
    step "JavaScript: toolchain"
    js_toolchain
    step "JavaScript: stages"
    js_stage js_classify plugins/js-classify/classify.js
    js_stage js_hostile tests/plugins/js-hostile/hostile.js
}

for lang in "${langs[@]}"; do
    case "$lang" in
        c) build_c ;;
        python) build_python ;;
        js) build_js ;;
        *) echo "unknown language '$lang': use c, python or js" >&2; exit 2 ;;
    esac
done
