#!/usr/bin/env bash
# Build the Debian package of the agent: bosun_<version>_<arch>.deb with
#   /usr/bin/bosun                              the binary
#   /lib/systemd/system/bosun-agent.service     systemd/bosun-agent.service (ExecStart → /usr/bin)
#   /etc/bosun/agent.toml                       systemd/agent.toml (a conffile: kept on upgrade)
#   /usr/share/doc/bosun/                        README, docs/ (what README links to), copyright
# and maintainer scripts (packaging/debian/) that make the `bosun` system user in group
# `docker`, keep /etc/bosun root:bosun 0750, and enable the unit (started once a
# registration token is in place; restarted on upgrade).
#
#   scripts/build-deb.sh [--binary PATH] [--out DIR]
#
# Default binary: target/dist/bosun, built with `cargo build --profile dist` (release with
# whole-program LTO: a smaller binary and a smaller idle agent; see Cargo.toml) if missing.
# Needs dpkg-deb (and fakeroot when not run as root). gzip, not xz: a debug binary of 200 MB
# packs in seconds instead of a minute.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=""
out="$here/target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    binary="${CARGO_TARGET_DIR:-$here/target}/dist/bosun"
    [ -x "$binary" ] || (cd "$here" && cargo build --profile dist --bin bosun)
fi
[ -x "$binary" ] || { echo "build-deb.sh: no binary at $binary" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
pkg="$root/pkg"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
    "$pkg/etc/bosun" "$pkg/usr/share/doc/bosun"
install -m 0755 "$binary" "$pkg/usr/bin/bosun"
sed 's#^ExecStart=/usr/local/bin/bosun #ExecStart=/usr/bin/bosun #' \
    "$here/systemd/bosun-agent.service" >"$pkg/lib/systemd/system/bosun-agent.service"
grep -q '^ExecStart=/usr/bin/bosun ' "$pkg/lib/systemd/system/bosun-agent.service" || {
    echo "build-deb.sh: the unit's ExecStart no longer starts /usr/local/bin/bosun" >&2
    exit 1
}
chmod 0644 "$pkg/lib/systemd/system/bosun-agent.service"
install -m 0640 "$here/systemd/agent.toml" "$pkg/etc/bosun/agent.toml"
install -m 0644 "$here/README.md" "$pkg/usr/share/doc/bosun/README.md"
install -d -m 0755 "$pkg/usr/share/doc/bosun/docs"
install -m 0644 "$here"/docs/*.md "$pkg/usr/share/doc/bosun/docs/"
printf 'Bosun\nLicense: Apache-2.0\n' >"$pkg/usr/share/doc/bosun/copyright"
chmod 0644 "$pkg/usr/share/doc/bosun/copyright"
for s in postinst prerm postrm; do
    install -m 0755 "$here/packaging/debian/$s" "$pkg/DEBIAN/$s"
done
echo "/etc/bosun/agent.toml" >"$pkg/DEBIAN/conffiles"
size="$(du -sk "$pkg" | cut -f1)"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: bosun
Version: $version
Architecture: $arch
Maintainer: Bosun developers <bosun@localhost>
Installed-Size: $size
Depends: libc6, passwd
Recommends: docker.io | docker-ce
Section: devel
Priority: optional
Description: build agent running CircleCI jobs in Docker containers
 bosun agent pulls jobs from a bosun coordinator and runs each in clean Docker
 containers, as systemd service bosun-agent (user bosun, group docker).
CONTROL

mkdir -p "$out"
deb="$out/bosun_${version}_${arch}.deb"
if [ "$(id -u)" = 0 ]; then
    dpkg-deb -Zgzip --root-owner-group --build "$pkg" "$deb" >/dev/null
else
    fakeroot dpkg-deb -Zgzip --root-owner-group --build "$pkg" "$deb" >/dev/null
fi
echo "$deb"
