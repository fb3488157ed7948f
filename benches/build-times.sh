#!/usr/bin/env bash
# Build times of two revisions of this repository, measured in one run:
#
#   benches/build-times.sh BEFORE AFTER [WORKDIR]
#
# For each revision, in a clone of its own with a target directory of its own (dev profile):
#   clean       `cargo build --workspace` (the whole `bosun` binary) from an empty target
#   agent       `cargo build --bin bosun --no-default-features` from an empty target, where the
#               revision has a `coordinator` feature (else the same as clean: no separate build)
#   coord       `cargo build --workspace` after touching one coordinator store file
#   job         `cargo build --workspace` after touching one job-core file
#   coord-edit, job-edit
#               the same after a real edit (a function appended to the file), undone after
#   tests       `cargo test --workspace --no-run` after touching the same job-core file
# and the sizes of target/debug/bosun and of the integration-test executables.
#
# Each figure is given as wall seconds and CPU seconds (user + system). On a shared machine
# the CPU seconds are the steadier figure: another process slows the wall clock of a build
# far more than the work the build does. The incremental builds alternate between the two
# revisions, ROUNDS times (default 2), so both see the same load. TESTS=0 leaves the test
# builds out (they double the time of a run).
set -euo pipefail

usage() {
    echo "usage: $0 BEFORE AFTER [WORKDIR]" >&2
    exit 2
}
(($# == 2 || $# == 3)) || usage
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${3:-$(mktemp -d /tmp/bosun-build-times.XXXXXX)}
rounds=${ROUNDS:-2}
tests=${TESTS:-1}
clean=${CLEAN:-1}
mkdir -p "$work"

# Writes "WALL CPU" (seconds) for a command run in DIR; the command's output goes to a log.
timed() {
    local dir=$1
    shift
    (cd "$dir" && /usr/bin/time -o "$work/time" -f '%e %U %S' "$@" >>"$work/log" 2>&1) || {
        echo "failed in $dir: $*; see $work/log" >&2
        exit 1
    }
    awk '{ printf "%.1f %.1f\n", $1, $2 + $3 }' "$work/time"
}

# The first of the given paths the checkout has (files moved between revisions).
first_of() {
    local dir=$1 path
    shift
    for path in "$@"; do
        [[ -e $dir/$path ]] && {
            echo "$path"
            return
        }
    done
    echo "none of $* in $dir" >&2
    exit 1
}

declare -A checkout
for label in before after; do
    rev=${1}
    shift
    dir=$work/$label
    if [[ ! -d $dir ]]; then
        git clone -q "$repo" "$dir"
    fi
    git -C "$dir" checkout -q --detach "$rev"
    checkout[$label]=$dir
    printf '%s = %s\n' "$label" "$(git -C "$dir" log --oneline -1)"
done

unset CARGO_TARGET_DIR
report() { printf '%-7s %-6s wall %7s s  cpu %7s s\n' "$1" "$2" $3; }

for label in before after; do
    ((clean)) || break
    dir=${checkout[$label]}
    rm -rf "$dir/target"
    cargo fetch --manifest-path "$dir/Cargo.toml" -q
    report "$label" clean "$(timed "$dir" cargo build -q --workspace)"
    if grep -q '^coordinator *=' "$dir/Cargo.toml"; then
        mv "$dir/target" "$dir/target.full"
        report "$label" agent "$(timed "$dir" cargo build -q --bin bosun --no-default-features)"
        printf '%-7s agent binary %s bytes\n' "$label" "$(stat -c %s "$dir/target/debug/bosun")"
        rm -rf "$dir/target"
        mv "$dir/target.full" "$dir/target"
    fi
    printf '%-7s binary %s bytes\n' "$label" "$(stat -c %s "$dir/target/debug/bosun")"
    # The test executables once, so that the incremental test builds below are incremental.
    if ((tests)); then
        report "$label" alltests "$(timed "$dir" cargo test -q --workspace --no-run)"
    fi
done

for ((round = 1; round <= rounds; round++)); do
    for label in before after; do
        dir=${checkout[$label]}
        coord=$(first_of "$dir" crates/coordinator/src/store/mod.rs src/coordinator/store/mod.rs)
        job=$(first_of "$dir" crates/core/src/job/lifecycle.rs src/job/lifecycle.rs crates/core/src/job/mod.rs)
        touch "$dir/$coord"
        report "$label" coord "$(timed "$dir" cargo build -q --workspace)"
        touch "$dir/$job"
        report "$label" job "$(timed "$dir" cargo build -q --workspace)"
        for file in "$coord" "$job"; do
            kind=coord-edit
            [[ $file == "$job" ]] && kind=job-edit
            printf '\n#[allow(dead_code)]\nfn build_times_probe() -> u32 {\n    %d\n}\n' "$round" >>"$dir/$file"
            report "$label" "$kind" "$(timed "$dir" cargo build -q --workspace)"
            git -C "$dir" checkout -q -- "$file"
        done
        if ((tests)); then
            touch "$dir/$job"
            report "$label" tests "$(timed "$dir" cargo test -q --workspace --no-run)"
        fi
    done
done

for label in before after; do
    ((tests)) || break
    dir=${checkout[$label]}
    # Integration-test executables: name-hash files in deps/ that are executable and come from tests/.
    mapfile -t tests < <(find "$dir/target/debug/deps" -maxdepth 1 -type f -executable \
        -name '*-*' ! -name '*.so' ! -name '*.d' |
        while read -r f; do
            base=$(basename "$f")
            name=${base%-*}
            [[ -e $dir/tests/$name.rs || -e $dir/tests/$name/main.rs ]] && echo "$f"
        done)
    total=0
    for f in "${tests[@]}"; do total=$((total + $(stat -c %s "$f"))); done
    printf '%-7s integration-test executables: %d, %s bytes\n' "$label" "${#tests[@]}" "$total"
done
echo "work dir: $work (remove it when done)"
