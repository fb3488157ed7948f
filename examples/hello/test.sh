#!/bin/sh
# A tiny test suite: checks a file from the checkout and the background service.
set -eu
grep -q 'Bosun example' README.md && echo "ok 1 - README checked out"
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/heartbeat ] && break; sleep 0.5; done
[ -s /tmp/heartbeat ] && echo "ok 2 - background service is running"
