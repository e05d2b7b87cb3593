#!/usr/bin/env bash
# Runs every cargo-fuzz target of the signing crate for SECONDS each
# (default 60), on nightly (the project itself stays on stable). Installs
# the nightly toolchain and cargo-fuzz when missing. Fails on any crash,
# leak or timeout; the input that caused it is left under
# signing/fuzz/artifacts/<target>/ (reproduce with
# `cargo +nightly fuzz run <target> <file>` in signing/fuzz).
#
# Usage: tests/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../signing/fuzz"

seconds="${1:-60}"
shift || true

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for all targets (debug assertions on, as cargo-fuzz defaults).
cargo +nightly fuzz build

for target in "${targets[@]}"; do
    printf '\n== fuzz %s for %ss (at %ds)\n' "$target" "$seconds" "$SECONDS"
    mkdir -p "corpus/$target"
    # New inputs go to corpus/ (not committed); seeds/ is read only.
    # -rss_limit_mb: a parser must not need 2 GB for any input.
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
    # The archive target unpacks into a temp dir per process.
    rm -rf "${TMPDIR:-/tmp}"/outpost-fuzz-archive-*
done
printf '\n== fuzz: %d targets, %ss each, no crash (at %ds)\n' "${#targets[@]}" "$seconds" "$SECONDS"
