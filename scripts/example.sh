#!/usr/bin/env bash
# Runs the `build` job of the shipped example project with `bosun execute`.
# The example lives in this repository as plain files; bosun checks out a git repository, so
# it is copied into a fresh one first. The test image is built on first use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/images/build.sh" base
cargo build --release --manifest-path "$root/Cargo.toml" --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$root/examples/hello/." "$work/"
git -C "$work" init -q -b main
git -C "$work" add -A
git -C "$work" -c user.name=bosun -c user.email=bosun@example.invalid commit -q -m "example"
cd "$work"
"$root/target/release/bosun" execute --job build "$@"
