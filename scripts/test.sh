#!/usr/bin/env bash
# The one test command (README, .ci/run):
#
#   scripts/test.sh [TEST-BINARY ARGS…]   check the host, build the test images, run every test
#   scripts/test.sh --setup               only check the host and build the test images
#
# Before anything is compiled it checks every host tool the tests run, and that the Docker
# engine answers. Run as root on Debian, it installs what is missing with apt-get; otherwise
# it names the missing tools and their Debian packages and exits 1, so a new machine fails
# here, in one message, rather than as a panic deep in a test. The tools, and who needs them:
#   debootstrap      images/build.sh builds the test images from Debian packages (no container
#                    registry is reachable, the engine starts empty)
#   ssh, ssh-keygen, ssh-keyscan, scp, sftp
#                    the harness makes keys and talks to the Bitbucket stand-in and the SSH
#                    gateway as a user would
#   rsync            tests/it/sftp.rs copies trees into a job with `rsync -e ssh`
#   git              the harness fills the stand-in's repositories
#   sshd             tests/it/checkout_sshd.rs runs a host sshd for the checkout's real-server tests
#   chromium         the job and pipeline pages' tests drive it headless
#   flock            images/build.sh serialises image builds of concurrent test runs
#   openssl          tests/it/harness/tls.rs makes the test CA and certificates for HTTPS
#   dpkg-deb         scripts/build-deb.sh packages the agent (tests/it/systemd.rs installs it),
#                    with fakeroot when not run as root
#   systemd-analyze  systemd/verify.sh checks the agent's unit (tests/it/systemd.rs needs nothing
#                    more on the host: its systemd is the bosun/systemd image's)
#   initdb           the coordinator's PostgreSQL store: its tests and tests/it/scale_pg.rs start a
#                    throwaway server (initdb, pg_ctl from /usr/lib/postgresql/N/bin)
#   pycircleci, circleci-env-cli, aiosmtpd
#                    (PyPI, pinned; into a venv, skipped when present) tests/it/api_v2.rs drives
#                    the coordinator's API v2 with the first two; tests/it/notify.rs runs
#                    aiosmtpd as the real SMTP server notification mail goes to
#   s3s-fs           (crates.io, pinned; `cargo install --locked`, skipped when present) a real
#                    S3 server on a directory: tests/it/object_storage.rs and the coordinator's
#                    object-store tests keep blobs and logs in it (BOSUN_S3S_FS names the binary)
# Then the images: `images/build.sh all` builds what is missing and costs nothing when all are
# current (building needs root, for debootstrap and chroot). Integration tests start Docker
# containers; four at a time keeps a 2-core machine busy without starving sshd start-ups.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

setup_only=false
if [[ ${1:-} == --setup ]]; then
    setup_only=true
    shift
fi

# Host tools: command → the Debian package that provides it.
declare -A package_of=(
    [debootstrap]=debootstrap
    [ssh]=openssh-client
    [ssh-keygen]=openssh-client
    [ssh-keyscan]=openssh-client
    [scp]=openssh-client
    [sftp]=openssh-client
    [rsync]=rsync
    [git]=git
    [sshd]=openssh-server
    [chromium]=chromium
    [flock]=util-linux
    [openssl]=openssl
    [dpkg-deb]=dpkg
    [systemd-analyze]=systemd
    [initdb]=postgresql
)
if [[ $(id -u) != 0 ]]; then
    package_of[fakeroot]=fakeroot
fi

# sshd and debootstrap live in /usr/sbin, which a user's PATH may lack. The harness takes
# Chromium under any of its names.
have() {
    local name
    local -a names=("$1")
    [[ $1 == chromium ]] && names+=(chromium-browser google-chrome)
    # Debian keeps PostgreSQL's server tools off PATH, one directory per major version.
    [[ $1 == initdb ]] && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
    for name in "${names[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

missing_tools() {
    local tool
    for tool in "${!package_of[@]}"; do
        have "$tool" || printf '%s\n' "$tool"
    done | sort
}

mapfile -t missing < <(missing_tools)
if ((${#missing[@]})); then
    mapfile -t packages < <(for tool in "${missing[@]}"; do printf '%s\n' "${package_of[$tool]}"; done | sort -u)
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${packages[*]} (for ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
        mapfile -t missing < <(missing_tools)
        if ((${#missing[@]})); then
            say "still missing after apt-get install: ${missing[*]}"
            exit 1
        fi
    else
        say "missing host tools the tests need: ${missing[*]}"
        say "install them (Debian packages):  sudo apt-get install ${packages[*]}"
        say "or run this script as root on Debian, which installs them"
        exit 1
    fi
fi

if ! command -v docker >/dev/null 2>&1; then
    say "the docker command is missing: install Docker Engine (Debian: apt-get install docker.io) and start it"
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    say "cannot talk to the Docker engine (docker info failed)"
    say "is it running (systemctl start docker), and may $(id -un) use it (sudo usermod -aG docker $(id -un), then log in again)?"
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    say "the Rust toolchain (cargo) is not installed; install it from https://rustup.rs, then run this again"
    exit 1
fi

# API clients from PyPI that tests/it/api_v2.rs drives (pinned): importable by python3 already,
# or installed into a virtual environment the test finds (BOSUN_PY_CLIENTS, default below).
py_clients=${BOSUN_PY_CLIENTS:-$HOME/.cache/bosun/py-clients}
py_pins=(pycircleci==0.7.0 circleci-env-cli==0.3.1 aiosmtpd==1.4.6)
if ! python3 -c 'import pycircleci, circleci_env_cli, aiosmtpd' >/dev/null 2>&1 &&
    ! "$py_clients/bin/python3" -c 'import pycircleci, circleci_env_cli, aiosmtpd' >/dev/null 2>&1; then
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    fi
    say "installing ${py_pins[*]} into $py_clients"
    python3 -m venv "$py_clients" && "$py_clients/bin/python3" -m pip install -q "${py_pins[@]}" ||
        say "could not install ${py_pins[*]}: the API v2 client and notification mail tests will be skipped"
fi

# A real S3-compatible server for the object-storage tests (pinned): on PATH already, or
# installed into its own root, where the tests look for it (BOSUN_S3S_FS overrides both).
s3s_root=${BOSUN_S3S_ROOT:-$HOME/.cache/bosun/s3s-fs}
s3s_version=0.14.1
if ! command -v s3s-fs >/dev/null 2>&1 && ! [[ -x $s3s_root/bin/s3s-fs ]]; then
    say "installing s3s-fs $s3s_version into $s3s_root"
    cargo install --quiet --locked --root "$s3s_root" --version "$s3s_version" \
        --features binary s3s-fs ||
        say "could not install s3s-fs: the object-storage tests will fail"
fi

# stdout carries the images' exact tags, which only the harness wants.
if ! images/build.sh all >/dev/null; then
    say "the test images could not be built (above: why); building them needs root: sudo images/build.sh all"
    exit 1
fi

if $setup_only; then
    exit 0
fi
# --workspace: the unit tests live in the member crates (crates/), not in the root package.
# Every failure of a run at once: a failing unit test does not hide the integration tests.
exec cargo test --workspace --all-targets --no-fail-fast -- --test-threads=4 "$@"
