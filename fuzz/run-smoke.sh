#!/usr/bin/env bash
# Short smoke fuzz of every fuzz target (dpop-core's and the gateway's), on a stable toolchain.
#
#   fuzz/run-smoke.sh [SECONDS]        # default 10 seconds per target
#
# Installs cargo-fuzz when it is missing, then runs each target for SECONDS with
# AddressSanitizer. The committed seeds in fuzz/corpus/<target>/ are read but never
# written: new inputs go to a scratch folder that is deleted afterwards. A crash input is
# kept in fuzz/artifacts/<target>/ and the script exits non-zero after trying every target.
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none (faster, catches only panics and aborts)
#   FUZZ_TARGETS    space-separated subset of targets (default: all seven)
set -euo pipefail

seconds="${1:-10}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]   (a positive whole number, default 10)" >&2
    exit 2
fi
sanitizer="${FUZZ_SANITIZER:-address}"
targets="${FUZZ_TARGETS:-verify_proof parse_jwk normalise_htu parse_challenge verify_jwt canonical_target h1_response}"

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"

# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module, ...).
# RUSTC_BOOTSTRAP=1 makes a stable toolchain accept them; no nightly is needed.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (takes a few minutes)"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# fuzz/Cargo.lock is not committed. Start it from the workspace lock so the fuzzed
# dependency versions are the ones the test suite uses; cargo adds libfuzzer-sys to it.
if [[ ! -f Cargo.lock && -f ../Cargo.lock ]]; then
    cp ../Cargo.lock Cargo.lock
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/dpop-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in $targets; do
    echo "==> $target: ${seconds}s, sanitizer=$sanitizer"
    mkdir -p "$scratch/corpus/$target"
    log="$scratch/$target.log"
    # The first corpus folder is the one libFuzzer writes new inputs to: the scratch one.
    if cargo fuzz run --sanitizer "$sanitizer" "$target" \
        "$scratch/corpus/$target" "corpus/$target" \
        -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
    else
        failed+=("$target")
        tail -n 60 "$log"
        echo "!! $target failed; crash inputs (if any) are in fuzz/artifacts/$target/" >&2
    fi
done

if ((${#failed[@]})); then
    echo "fuzz smoke FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke passed: $targets"
