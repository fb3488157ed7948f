#!/usr/bin/env bash
# Runs the `build` job of the shipped example project with `bosun execute`.
# The example lives in this repository as plain files; bosun checks out a git repository, so
# it is copied into a fresh one first. The job image is built on first use from Debian
# packages (no registry needed), which takes debootstrap and about a minute.
#
# On a bare Debian machine with Docker this installs what it lacks (debootstrap, git) when it
# runs as root, and otherwise says exactly what to install.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

say() { printf 'example: %s\n' "$*" >&2; }

# Host tools: command → Debian package.
declare -A package_of=([debootstrap]=debootstrap [git]=git [flock]=util-linux)
missing=()
for tool in "${!package_of[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} (needed to build the job image from Debian packages)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "missing: ${missing[*]}"
        say "install them first:  sudo apt-get install ${missing[*]}"
        exit 1
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "the Rust toolchain (cargo) is not installed; install it from https://rustup.rs, then run this again"
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    say "cannot talk to the Docker engine (docker info failed)"
    say "is it running (systemctl start docker), and may $(id -un) use it (sudo usermod -aG docker $(id -un), then log in again)?"
    exit 1
fi
# debootstrap runs as root; the image build needs it only the first time.
if [[ $(id -u) != 0 ]] && ! docker image inspect bosun/base:latest >/dev/null 2>&1; then
    say "the job image is built once with debootstrap, which needs root: run  sudo $root/images/build.sh base  first"
    exit 1
fi

bash "$root/images/build.sh" base >/dev/null
cargo build --release --manifest-path "$root/Cargo.toml" --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$root/examples/hello/." "$work/"
git -C "$work" init -q -b main
git -C "$work" add -A
git -C "$work" -c user.name=bosun -c user.email=bosun@example.invalid commit -q -m "example"
cd "$work"
"$root/target/release/bosun" execute --job build "$@"
