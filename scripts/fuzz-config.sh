#!/bin/sh
# Long property run of the config compiler (not part of CI): YAML text -> compile never panics.
#   scripts/fuzz-config.sh            # 20000 cases per property
#   scripts/fuzz-config.sh 100000     # more
#   FUZZ_SECONDS=600 scripts/fuzz-config.sh   # repeat 2000-case rounds until the time is up
# Release mode with debug assertions and overflow checks, so arithmetic bugs panic too.
set -eu
cd "$(dirname "$0")/.."
cases="${1:-20000}"
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
if [ -n "${FUZZ_SECONDS:-}" ]; then
    end=$(( $(date +%s) + FUZZ_SECONDS ))
    round=0
    while [ "$(date +%s)" -lt "$end" ]; do
        round=$((round + 1))
        echo "round $round"
        # A fresh seed per round (proptest otherwise reuses none, but be explicit).
        PROPTEST_CASES=2000 PROPTEST_RNG_SEED="$(date +%s)$round" \
            cargo test --release --test it config_props:: -- --test-threads=2
    done
else
    PROPTEST_CASES="$cases" cargo test --release --test it config_props:: -- --test-threads=2
fi
