#!/usr/bin/env bash
# Runs the cargo-fuzz targets of the signing crate (signing/fuzz) and of the
# host crate (host/fuzz) for SECONDS each (default 60), on nightly (the
# project itself stays on stable). Installs the nightly toolchain and
# cargo-fuzz when missing. Fails on any crash, leak or timeout; the input
# that caused it is left under <project>/fuzz/artifacts/<target>/
# (reproduce with `cargo +nightly fuzz run <target> <file>` in that
# directory).
#
# Usage: tests/fuzz.sh [SECONDS] [PROJECT[:TARGET]...]
#   PROJECT is `signing` or `host` (default: both, all their targets);
#   `host:tensor_json` runs one target.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

seconds=60
case "${1:-}" in
    '') ;;
    *[!0-9]*) ;; # not a number: a project
    *)
        seconds="$1"
        shift
        ;;
esac

if [ "$#" -gt 0 ]; then
    selected=("$@")
else
    selected=(signing host)
fi
# Projects in the order first named; targets per project (empty: all).
projects=()
declare -A wanted=()
for item in "${selected[@]}"; do
    project="${item%%:*}"
    case "$project" in
        signing | host) ;;
        *)
            echo "tests/fuzz.sh: unknown project '$project'" >&2
            echo "usage: tests/fuzz.sh [SECONDS] [PROJECT[:TARGET]...] (PROJECT: signing, host)" >&2
            exit 2
            ;;
    esac
    if [ -z "${wanted[$project]+set}" ]; then
        projects+=("$project")
        wanted[$project]=""
    fi
    if [ "$item" != "$project" ]; then
        wanted[$project]+="${item#*:} "
    fi
done

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

total=0
for project in "${projects[@]}"; do
    cd "$root/$project/fuzz"
    if [ -n "${wanted[$project]}" ]; then
        read -r -a targets <<<"${wanted[$project]}"
    else
        mapfile -t targets < <(cargo +nightly fuzz list)
    fi

    # One build per project for all its targets (debug assertions on, as
    # cargo-fuzz defaults). The host's pulls in wasmtime and tract: the
    # first build takes a while.
    printf '\n== build %s/fuzz (at %ds)\n' "$project" "$SECONDS"
    cargo +nightly fuzz build

    for target in "${targets[@]}"; do
        printf '\n== fuzz %s %s for %ss (at %ds)\n' "$project" "$target" "$seconds" "$SECONDS"
        mkdir -p "corpus/$target"
        # New inputs go to corpus/ (not committed); seeds/ is read only.
        # -rss_limit_mb: a parser must not need 2 GB for any input.
        cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
        # signing's archive target unpacks into a temp dir per process.
        rm -rf "${TMPDIR:-/tmp}"/outpost-fuzz-archive-*
        total=$((total + 1))
    done
done
printf '\n== fuzz: %d targets (%s), %ss each, no crash (at %ds)\n' \
    "$total" "${projects[*]}" "$seconds" "$SECONDS"
