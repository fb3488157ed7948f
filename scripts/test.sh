#!/usr/bin/env bash
# The one test command, shared by .ci/run and the README. Integration tests
# start Docker containers (the Bitbucket stand-in, job containers); four at a
# time keeps a 2-core machine busy without starving sshd start-ups.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --all-targets -- --test-threads=4 "$@"
