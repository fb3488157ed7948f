#!/usr/bin/env bash
# Builds Bosun's test images from Debian packages, without any container
# registry (none is reachable from the machines this project runs on, and the
# Docker engine starts with no images at all).
#
#   images/build.sh [base|nobash|gitserver|systemd|machine|postgres|redis|docker|registry|all]...
#                        (default: all; several names build several images)
#   images/build.sh prune    remove hashed tags other than this version's
#
# Each image is tagged bosun/<name>:<hash> and bosun/<name>:latest, where
# <hash> covers everything that goes into it (this script, its package list,
# the mirror, the suite, the files it installs). An existing hashed tag means
# "up to date" and costs nothing, so tests may call this on every run.
#
# stdout carries only the exact tags (one "bosun/<name>:<hash>" per line);
# the test harness uses those rather than :latest, because several work trees
# with different versions of this script may share one Docker engine, and
# :latest then points at whichever built last. For the same reason old hashed
# tags are never removed automatically (use `prune`).
#
# Environment:
#   BOSUN_IMAGE_CACHE    scratch space for root filesystems (default /var/cache/bosun-images)
#   BOSUN_DEBIAN_MIRROR  Debian mirror URL (default: the one apt on this machine uses)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
CACHE=${BOSUN_IMAGE_CACHE:-/var/cache/bosun-images}

# bash/git/openssh-client/ca-certificates: what a CircleCI job's checkout
# needs. procps: ps and kill, which minbase lacks (util-linux, in minbase,
# brings setsid; tar is essential anyway). postgresql-client, redis-tools,
# netcat-openbsd: what a job needs to wait for and talk to its service
# containers (pg_isready, psql, redis-cli, nc -z); +16 MB, perl being in
# base already (git needs it), so no separate job image for them. rsync:
# `rsync -e ssh` into a job through the SSH gateway runs the image's own
# rsync (tests/it/sftp.rs). Never openssh-server: the gateway serves SFTP
# itself, and base is the image without an sftp-server that proves it.
BASE_PACKAGES=bash,git,openssh-client,ca-certificates,procps,postgresql-client,redis-tools,netcat-openbsd,rsync
GITSERVER_PACKAGES=openssh-server
# A machine an operator installs the agent on: systemd as PID 1 (systemd-sysv),
# dbus for systemctl. The agent's runtime needs (libssl via openssl,
# ca-certificates, zlib) are already in base.
SYSTEMD_PACKAGES="systemd systemd-sysv dbus"
# What a CircleCI machine job runs on, as a container: systemd as above, sudo
# for the job user, the docker CLI (Debian's docker.io; its daemon is masked),
# curl (git, ssh, tar and gzip are in base), socat for the demo unit.
MACHINE_PACKAGES="$SYSTEMD_PACKAGES sudo docker.io curl socat"
# Service containers for the docker executor (base's rootfs + the server).
POSTGRES_PACKAGES="postgresql-15"
REDIS_PACKAGES="redis-server"
# A docker-executor job image for setup_remote_docker: base + the docker CLI
# (Debian's docker.io; nothing starts its daemon in a job container). Its own
# image rather than part of base: docker.io brings ~150 MB (containerd, runc,
# iptables) that every other image would carry for nothing.
DOCKER_PACKAGES="docker.io"
# A docker-executor job image for orbs' scripts, as CircleCI's cimg/base is: base + curl
# and jq, which the continuation and path-filtering orbs call (setup workflows).
CIMG_PACKAGES="curl jq"
# A private registry for tests of image pulls with `auth:` (Debian's build of
# the CNCF distribution registry) and htpasswd to make its bcrypt password file.
REGISTRY_PACKAGES="docker-registry apache2-utils"

log() { printf '[images] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# The mirror apt on this machine already uses is the one that is reachable.
# deb822 stanzas (sources.list.d/*.sources) first, then one-line "deb URL suite"
# entries; the suite must match exactly so -security/-updates are skipped.
detect_mirror() {
    if [[ -n ${BOSUN_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "$BOSUN_DEBIAN_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; has_suite = 0; is_deb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
                    if ($i ~ /^Suites:/) {
                        n = split($i, s, /[ \t]+/)
                        for (j = 2; j <= n; j++) if (s[j] == suite) has_suite = 1
                    }
                    if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) is_deb = 1
                }
                if (uri != "" && has_suite && is_deb) { print uri; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return
        fi
    done
    printf '%s\n' http://deb.debian.org/debian
}

MIRROR=$(detect_mirror)

hash_of() {
    # Inputs are fed with their names so that moving bytes between inputs
    # still changes the hash.
    local item
    for item in "$@"; do
        printf '%s\n' "$item"
    done | sha256sum | cut -c1-12
}

# The files under images/DIR that an image installs.
files_sum() {
    (cd "$HERE/$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

SCRIPT_SUM=$(sha256sum "$HERE/build.sh" | cut -d' ' -f1)
GITSERVER_SUM=$(files_sum gitserver)
MACHINE_SUM=$(files_sum machine)
POSTGRES_SUM=$(files_sum postgres)
REGISTRY_SUM=$(files_sum registry)

BASE_HASH=$(hash_of "script=$SCRIPT_SUM" base "packages=$BASE_PACKAGES" "mirror=$MIRROR" "suite=$SUITE")
NOBASH_HASH=$(hash_of "script=$SCRIPT_SUM" nobash "packages=busybox-static" "mirror=$MIRROR" "suite=$SUITE")
GITSERVER_HASH=$(hash_of "script=$SCRIPT_SUM" gitserver "base=$BASE_HASH" "packages=$GITSERVER_PACKAGES" "files=$GITSERVER_SUM")
SYSTEMD_HASH=$(hash_of "script=$SCRIPT_SUM" systemd "base=$BASE_HASH" "packages=$SYSTEMD_PACKAGES")
MACHINE_HASH=$(hash_of "script=$SCRIPT_SUM" machine "base=$BASE_HASH" "packages=$MACHINE_PACKAGES" "files=$MACHINE_SUM")
POSTGRES_HASH=$(hash_of "script=$SCRIPT_SUM" postgres "base=$BASE_HASH" "packages=$POSTGRES_PACKAGES" "files=$POSTGRES_SUM")
REDIS_HASH=$(hash_of "script=$SCRIPT_SUM" redis "base=$BASE_HASH" "packages=$REDIS_PACKAGES")
DOCKER_HASH=$(hash_of "script=$SCRIPT_SUM" docker "base=$BASE_HASH" "packages=$DOCKER_PACKAGES")
CIMG_HASH=$(hash_of "script=$SCRIPT_SUM" cimg "base=$BASE_HASH" "packages=$CIMG_PACKAGES")
REGISTRY_HASH=$(hash_of "script=$SCRIPT_SUM" registry "base=$BASE_HASH" "packages=$REGISTRY_PACKAGES" "files=$REGISTRY_SUM")

# Every image, in build order, and the ones made from base's rootfs.
ALL_IMAGES="base nobash gitserver systemd machine postgres redis docker registry cimg"
FROM_BASE_ROOTFS="gitserver systemd machine postgres redis docker registry cimg"

# bosun/<name>:<hash> of an image name.
tag_of() {
    local var=${1^^}_HASH
    printf 'bosun/%s:%s\n' "$1" "${!var}"
}

# debootstrap, chroot and a rootfs full of root-owned files.
need_root() {
    ((EUID == 0)) || die "building bosun/$1 needs root (debootstrap, chroot); run: sudo $0"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# import_rootfs DIR NAME HASH CMD [CHANGE...]: CHANGEs are further Dockerfile
# instructions for `docker import -c` (ENV, ENTRYPOINT, USER, WORKDIR, EXPOSE;
# engine 20.10 refuses STOPSIGNAL there).
import_rootfs() {
    local dir=$1 name=$2 hash=$3 cmd=$4
    shift 4
    local t change
    local -a changes=()
    for change in "$@"; do
        changes+=(-c "$change")
    done
    t=$(now)
    # --numeric-owner: the rootfs's uids are its own, not this host's names.
    tar --numeric-owner -C "$dir" -c . |
        docker import \
            -c "CMD $cmd" \
            -c "LABEL bosun.test-image=$name bosun.test-image.hash=$hash" \
            "${changes[@]}" \
            - "bosun/$name:$hash" >/dev/null
    docker tag "bosun/$name:$hash" "bosun/$name:latest"
    log "$name: imported bosun/$name:$hash ($(elapsed "$t"))"
}

# Apt inside a chroot needs name resolution, and must not try to start the
# services it installs (there is no init in there).
chroot_apt_install() {
    local dir=$1
    shift
    cp /etc/hosts /etc/resolv.conf "$dir/etc/"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    local logf
    logf="$CACHE/apt-${dir##*/}.log"
    if ! {
        DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get -q update &&
            DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get -q install -y --no-install-recommends "$@"
    } >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        die "apt-get install $* in $dir failed (full log: $logf)"
    fi
    rm -f "$logf"
    chroot "$dir" apt-get clean
    rm -f "$dir/usr/sbin/policy-rc.d"
    rm -rf "$dir"/var/lib/apt/lists/*
    # Docker bind-mounts its own over these at run time.
    : >"$dir/etc/hosts"
    : >"$dir/etc/resolv.conf"
}

# The base root filesystem, from debootstrap; gitserver starts from a copy of
# it. When the base image is current but its rootfs is gone (it is removed
# after use), exporting the image back is ~10x faster than debootstrap.
base_rootfs() {
    local dir="$CACHE/rootfs-base-$BASE_HASH"
    need_root base
    if [[ -f $dir/.complete ]]; then
        printf '%s\n' "$dir"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    local t
    t=$(now)
    if image_exists "bosun/base:$BASE_HASH"; then
        local cid
        cid=$(docker create "bosun/base:$BASE_HASH" /bin/true)
        docker export "$cid" | tar --numeric-owner -C "$dir" -x
        docker rm "$cid" >/dev/null
        log "base: rootfs exported from bosun/base:$BASE_HASH ($(elapsed "$t"))"
    else
        log "base: debootstrap $SUITE from $MIRROR"
        if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" \
            "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap-base.log" 2>&1; then
            tail -n 30 "$CACHE/debootstrap-base.log" >&2
            [[ -f $dir/debootstrap/debootstrap.log ]] && tail -n 30 "$dir/debootstrap/debootstrap.log" >&2
            die "debootstrap failed (full log: $CACHE/debootstrap-base.log)"
        fi
        # CircleCI's convenience images run jobs as circleci (uid 3434), so
        # the executor must be tested against a non-root job user.
        chroot "$dir" groupadd --gid 3434 circleci
        chroot "$dir" useradd --uid 3434 --gid 3434 --create-home \
            --home-dir /home/circleci --shell /bin/bash circleci
        chroot "$dir" apt-get clean
        : >"$dir/etc/hosts"
        : >"$dir/etc/resolv.conf"
        log "base: debootstrap done ($(elapsed "$t"))"
    fi
    touch "$dir/.complete"
    printf '%s\n' "$dir"
}

build_base() {
    if image_exists "bosun/base:$BASE_HASH"; then
        docker tag "bosun/base:$BASE_HASH" bosun/base:latest
        log "base: bosun/base:$BASE_HASH up to date"
        return
    fi
    local dir
    dir=$(base_rootfs)
    for tool in bash git ssh setsid kill ps tar; do
        chroot "$dir" sh -c "command -v $tool" >/dev/null || die "base: $tool missing from the rootfs"
    done
    import_rootfs "$dir" base "$BASE_HASH" '["/bin/bash"]'
}

build_nobash() {
    if image_exists "bosun/nobash:$NOBASH_HASH"; then
        docker tag "bosun/nobash:$NOBASH_HASH" bosun/nobash:latest
        log "nobash: bosun/nobash:$NOBASH_HASH up to date"
        return
    fi
    local t work dir
    need_root nobash
    t=$(now)
    work="$CACHE/work-nobash-$NOBASH_HASH"
    dir="$CACHE/rootfs-nobash-$NOBASH_HASH"
    rm -rf "$work" "$dir"
    mkdir -p "$work" "$dir"
    # apt-get download drops privileges to _apt, which must be able to write here.
    chmod 777 "$work"
    if ! (cd "$work" && apt-get download -qq busybox-static) >/dev/null 2>&1; then
        # A fresh machine may not have package lists yet.
        apt-get update -qq >/dev/null
        (cd "$work" && apt-get download -qq busybox-static) >/dev/null
    fi
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/x"

    # Images without bash exist (alpine, distroless-ish); the executor must
    # detect that and fall back to sh. Busybox alone is the smallest such image.
    mkdir -p "$dir/bin" "$dir/sbin" "$dir/usr/bin" "$dir/usr/sbin" "$dir/etc" "$dir/root"
    install -m 755 "$work/x/bin/busybox" "$dir/bin/busybox"
    local applet
    while IFS= read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        [[ -e $dir/$applet ]] && continue
        mkdir -p "$dir/$(dirname "$applet")"
        ln -s /bin/busybox "$dir/$applet"
    done < <("$dir/bin/busybox" --list-full)
    [[ -e $dir/bin/bash ]] && die "nobash: busybox provides bash; that defeats the image"
    install -d -m 1777 "$dir/tmp"
    install -d -m 700 "$dir/root"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$dir/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
    : >"$dir/etc/hosts"
    : >"$dir/etc/resolv.conf"
    import_rootfs "$dir" nobash "$NOBASH_HASH" '["/bin/sh"]'
    rm -rf "$work" "$dir"

    docker run --rm bosun/nobash:latest sh -c 'echo ok' | grep -qx ok || die "nobash: sh does not run"
    if docker run --rm bosun/nobash:latest sh -c 'test -e /bin/bash'; then
        die "nobash: /bin/bash exists"
    fi
    log "nobash: done ($(elapsed "$t"))"
}

build_gitserver() {
    if image_exists "bosun/gitserver:$GITSERVER_HASH"; then
        docker tag "bosun/gitserver:$GITSERVER_HASH" bosun/gitserver:latest
        log "gitserver: bosun/gitserver:$GITSERVER_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-gitserver-$GITSERVER_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    chroot_apt_install "$dir" $GITSERVER_PACKAGES
    # Each container makes its own with ssh-keygen -A (bb-start).
    rm -f "$dir"/etc/ssh/ssh_host_*

    chroot "$dir" useradd --system --create-home --home-dir /home/git --shell /bin/sh git
    # "*" rather than "!": with UsePAM no, sshd refuses "!" accounts as locked.
    chroot "$dir" usermod -p '*' git
    install -m 755 "$HERE/gitserver/bb-serve" "$HERE/gitserver/bb-start" "$dir/usr/local/bin/"
    install -m 644 "$HERE/gitserver/sshd_config" "$dir/etc/ssh/sshd_config.d/bitbucket.conf"
    install -m 644 "$HERE/gitserver/gitconfig" "$dir/etc/gitconfig"
    # Catch config mistakes at build time rather than as a silent rig that
    # never becomes ready.
    mkdir -p "$dir/run/sshd"
    chroot "$dir" ssh-keygen -q -t ed25519 -N '' -f /tmp/check_host_key
    chroot "$dir" /usr/sbin/sshd -t -f /etc/ssh/sshd_config -h /tmp/check_host_key ||
        die "gitserver: sshd rejects its configuration"
    rm -f "$dir"/tmp/check_host_key*

    import_rootfs "$dir" gitserver "$GITSERVER_HASH" '["/usr/local/bin/bb-start"]'
    rm -rf "$dir"
    log "gitserver: done ($(elapsed "$t"))"
}

# systemd_rootfs NAME HASH PACKAGE...: a copy of base's rootfs that boots
# systemd as PID 1 in an unprivileged container, with PACKAGEs installed
# (systemd, systemd-sysv and dbus among them). Prints its directory.
systemd_rootfs() {
    local name=$1 hash=$2
    shift 2
    local base dir
    base=$(base_rootfs)
    dir="$CACHE/rootfs-$name-$hash"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    chroot_apt_install "$dir" "$@"
    # Empty = "not yet initialised": each container's systemd makes its own at boot
    # instead of every container sharing the id apt's postinst wrote here.
    : >"$dir/etc/machine-id"
    rm -f "$dir/var/lib/dbus/machine-id"
    # No console in a container: getty would fail or respawn for nothing.
    chroot "$dir" systemctl mask getty@tty1.service console-getty.service >/dev/null 2>&1 || true
    [[ -x $dir/lib/systemd/systemd ]] || die "$name: /lib/systemd/systemd missing from the rootfs"
    chroot "$dir" sh -c 'command -v systemctl && command -v journalctl && command -v useradd' >/dev/null ||
        die "$name: systemctl, journalctl or useradd missing from the rootfs"
    printf '%s\n' "$dir"
}

build_systemd() {
    if image_exists "bosun/systemd:$SYSTEMD_HASH"; then
        docker tag "bosun/systemd:$SYSTEMD_HASH" bosun/systemd:latest
        log "systemd: bosun/systemd:$SYSTEMD_HASH up to date"
        return
    fi
    local t dir
    t=$(now)
    # shellcheck disable=SC2086 # a list of package names
    dir=$(systemd_rootfs systemd "$SYSTEMD_HASH" $SYSTEMD_PACKAGES)
    import_rootfs "$dir" systemd "$SYSTEMD_HASH" '["/lib/systemd/systemd"]'
    rm -rf "$dir"
    log "systemd: done ($(elapsed "$t"))"
}

# CircleCI's `machine` executor as a container: systemd as PID 1, the job
# user circleci with passwordless sudo, the docker CLI (pointed at an engine
# through DOCKER_HOST by the executor) and a disabled demo unit.
build_machine() {
    if image_exists "bosun/machine:$MACHINE_HASH"; then
        docker tag "bosun/machine:$MACHINE_HASH" bosun/machine:latest
        log "machine: bosun/machine:$MACHINE_HASH up to date"
        return
    fi
    local t dir
    t=$(now)
    # shellcheck disable=SC2086 # a list of package names
    dir=$(systemd_rootfs machine "$MACHINE_HASH" $MACHINE_PACKAGES)
    # Only the CLI is wanted: dockerd cannot start in an unprivileged
    # container (docker.service and docker.socket fail: "degraded"), and
    # containerd is of no use without it. With these and the gettys masked
    # (systemd_rootfs) nothing else fails: the system is "running".
    chroot "$dir" systemctl mask docker.service docker.socket containerd.service >/dev/null 2>&1
    chroot "$dir" getent passwd circleci | grep -qx 'circleci:x:3434:3434::/home/circleci:/bin/bash' ||
        die "machine: base's circleci user is not uid/gid 3434 with home /home/circleci and shell bash"
    # CircleCI's machine images: circleci may sudo anything, and use docker.
    printf 'circleci ALL=(ALL) NOPASSWD:ALL\n' >"$dir/etc/sudoers.d/circleci"
    chmod 0440 "$dir/etc/sudoers.d/circleci"
    chroot "$dir" visudo -cqf /etc/sudoers.d/circleci || die "machine: visudo rejects /etc/sudoers.d/circleci"
    chroot "$dir" usermod -aG docker circleci
    # Its own user: systemd warns about services running as nobody.
    chroot "$dir" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin bosun-echo
    install -m 644 "$HERE/machine/bosun-echo.service" "$dir/etc/systemd/system/bosun-echo.service"
    [[ $(chroot "$dir" systemctl is-enabled bosun-echo.service 2>/dev/null) == disabled ]] ||
        die "machine: bosun-echo.service is not 'disabled'"
    chroot "$dir" sh -c 'command -v docker && command -v curl && command -v sudo && command -v socat && command -v gzip' >/dev/null ||
        die "machine: docker, curl, sudo, socat or gzip missing from the rootfs"

    # container=docker: systemd knows it is in a container from the start
    # (what systemd-nspawn and podman set). The stop signal systemd wants,
    # SIGRTMIN+3, cannot be set here (engine 20.10's import refuses
    # STOPSIGNAL): whoever runs it passes --stop-signal (docs/executors.md).
    import_rootfs "$dir" machine "$MACHINE_HASH" '["/lib/systemd/systemd"]' \
        'ENV container=docker'
    rm -rf "$dir"
    log "machine: done ($(elapsed "$t"))"
}

# PostgreSQL 15 as a service container (see postgres/bosun-postgres-entrypoint).
build_postgres() {
    if image_exists "bosun/postgres:$POSTGRES_HASH"; then
        docker tag "bosun/postgres:$POSTGRES_HASH" bosun/postgres:latest
        log "postgres: bosun/postgres:$POSTGRES_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-postgres-$POSTGRES_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    # Debian's postinst would make a cluster "main" under /etc/postgresql; the
    # image makes its own below instead (as the official image does).
    mkdir -p "$dir/etc/postgresql-common/createcluster.d"
    printf 'create_main_cluster = false\n' >"$dir/etc/postgresql-common/createcluster.d/bosun.conf"
    chroot_apt_install "$dir" $POSTGRES_PACKAGES
    local bin=/usr/lib/postgresql/15/bin
    [[ -x $dir$bin/postgres ]] || die "postgres: $bin/postgres missing from the rootfs"

    # The cluster, made now so that a container's first start needs no initdb.
    # Test-only: trust for every local connection; fsync off (nothing here
    # outlives its job).
    install -d -o postgres -g postgres -m 2775 "$dir/var/run/postgresql"
    install -d -o postgres -g postgres -m 700 "$dir/var/lib/postgresql/data"
    chroot --userspec=postgres:postgres "$dir" "$bin/initdb" -D /var/lib/postgresql/data \
        --username=postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync \
        >"$CACHE/initdb-postgres.log" 2>&1 || {
        tail -n 30 "$CACHE/initdb-postgres.log" >&2
        die "postgres: initdb failed"
    }
    rm -f "$CACHE/initdb-postgres.log"
    cat >>"$dir/var/lib/postgresql/data/postgresql.conf" <<'EOF'

# bosun/postgres (images/build.sh)
listen_addresses = '127.0.0.1,::1'
port = 5432
dynamic_shared_memory_type = posix
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    cat >"$dir/var/lib/postgresql/data/pg_hba.conf" <<'EOF'
# bosun/postgres (images/build.sh): a test-only service container.
local all         all                trust
host  all         all  127.0.0.1/32  trust
host  all         all  ::1/128       trust
local replication all                trust
host  replication all  127.0.0.1/32  trust
host  replication all  ::1/128       trust
EOF
    install -m 755 "$HERE/postgres/bosun-postgres-entrypoint" "$dir/usr/local/bin/"

    # The official image also sets STOPSIGNAL SIGINT (fast shutdown), which
    # import cannot; SIGTERM is a smart shutdown, the same once clients are gone.
    import_rootfs "$dir" postgres "$POSTGRES_HASH" '["postgres"]' \
        'ENTRYPOINT ["/usr/local/bin/bosun-postgres-entrypoint"]' \
        "ENV PATH=$bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        'ENV PGDATA=/var/lib/postgresql/data' 'EXPOSE 5432'
    rm -rf "$dir"
    log "postgres: done ($(elapsed "$t"))"
}

# Redis as a service container: foreground, every address (it shares the
# job's network namespace), no protected mode, no persistence.
build_redis() {
    if image_exists "bosun/redis:$REDIS_HASH"; then
        docker tag "bosun/redis:$REDIS_HASH" bosun/redis:latest
        log "redis: bosun/redis:$REDIS_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-redis-$REDIS_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    chroot_apt_install "$dir" $REDIS_PACKAGES
    [[ -x $dir/usr/bin/redis-server ]] || die "redis: redis-server missing from the rootfs"
    # "-::" : listen on IPv6 too when the container has it, and go on without.
    import_rootfs "$dir" redis "$REDIS_HASH" \
        '["redis-server", "--bind", "0.0.0.0", "-::", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis"]' \
        'USER redis' 'WORKDIR /var/lib/redis' 'EXPOSE 6379'
    rm -rf "$dir"
    log "redis: done ($(elapsed "$t"))"
}

# The docker CLI for jobs with setup_remote_docker (the engine is the job's,
# reached through the socket the agent mounts; see docs/engine.md).
build_docker() {
    if image_exists "bosun/docker:$DOCKER_HASH"; then
        docker tag "bosun/docker:$DOCKER_HASH" bosun/docker:latest
        log "docker: bosun/docker:$DOCKER_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-docker-$DOCKER_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    # shellcheck disable=SC2086 # a list of package names
    chroot_apt_install "$dir" $DOCKER_PACKAGES
    [[ -x $dir/usr/bin/docker ]] || die "docker: the docker CLI is missing from the rootfs"
    # The daemon cannot run unprivileged and is never wanted here.
    rm -f "$dir/usr/sbin/dockerd" "$dir/usr/bin/containerd" "$dir/usr/bin/containerd-shim-runc-v2"
    chroot "$dir" usermod -aG docker circleci
    import_rootfs "$dir" docker "$DOCKER_HASH" '["/bin/bash"]'
    rm -rf "$dir"
    log "docker: done ($(elapsed "$t"))"
}

# curl and jq for orbs' scripts (images/README.md).
build_cimg() {
    if image_exists "bosun/cimg:$CIMG_HASH"; then
        docker tag "bosun/cimg:$CIMG_HASH" bosun/cimg:latest
        log "cimg: bosun/cimg:$CIMG_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-cimg-$CIMG_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    # shellcheck disable=SC2086 # a list of package names
    chroot_apt_install "$dir" $CIMG_PACKAGES
    [[ -x $dir/usr/bin/curl && -x $dir/usr/bin/jq ]] || die "cimg: curl or jq missing from the rootfs"
    import_rootfs "$dir" cimg "$CIMG_HASH" '["/bin/bash"]'
    rm -rf "$dir"
    log "cimg: done ($(elapsed "$t"))"
}

# A private registry (images/registry/config.yml: htpasswd auth, port 5000).
build_registry() {
    if image_exists "bosun/registry:$REGISTRY_HASH"; then
        docker tag "bosun/registry:$REGISTRY_HASH" bosun/registry:latest
        log "registry: bosun/registry:$REGISTRY_HASH up to date"
        return
    fi
    local t base dir
    t=$(now)
    base=$(base_rootfs)
    dir="$CACHE/rootfs-registry-$REGISTRY_HASH"
    rm -rf "$dir"
    cp -a "$base" "$dir"
    rm -f "$dir/.complete"
    # shellcheck disable=SC2086 # a list of package names
    chroot_apt_install "$dir" $REGISTRY_PACKAGES
    [[ -x $dir/usr/bin/docker-registry ]] || die "registry: docker-registry missing from the rootfs"
    [[ -x $dir/usr/bin/htpasswd ]] || die "registry: htpasswd missing from the rootfs"
    install -m 644 "$HERE/registry/config.yml" "$dir/etc/docker/registry/config.yml"
    install -d -m 755 "$dir/var/lib/docker-registry" "$dir/auth"
    import_rootfs "$dir" registry "$REGISTRY_HASH" \
        '["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]' \
        'EXPOSE 5000'
    rm -rf "$dir"
    log "registry: done ($(elapsed "$t"))"
}

main() {
    if [[ $* == prune ]]; then
        prune_old_tags
        return
    fi
    local -a names=()
    local name
    (($#)) || set -- all
    # shellcheck disable=SC2046 # all: the names, split on purpose
    set -- $(for name in "$@"; do [[ $name == all ]] && echo "$ALL_IMAGES" || echo "$name"; done)
    for name in "$@"; do
        [[ " $ALL_IMAGES " == *" $name "* ]] ||
            die "usage: $0 [${ALL_IMAGES// /|}|all]... | $0 prune"
        [[ " ${names[*]} " == *" $name "* ]] || names+=("$name")
    done
    command -v docker >/dev/null || die "docker CLI not found"
    # Parallel test binaries each call this script; one builds, the others
    # wait and then find the images up to date. A non-root developer whose
    # images are current cannot create the cache but needs no build either.
    local lock="$CACHE/.lock"
    mkdir -p "$CACHE" 2>/dev/null || lock="${TMPDIR:-/tmp}/bosun-images-$(id -u).lock"
    exec 9>"$lock"
    flock 9

    local t
    t=$(now)
    log "mirror $MIRROR, suite $SUITE, cache $CACHE"
    # Leftovers of an interrupted run are never reused: a partial rootfs has
    # no .complete marker and a hash nobody asks for again.
    [[ -d $CACHE && -w $CACHE ]] && find "$CACHE" -mindepth 1 -maxdepth 1 -type d \( -name 'rootfs-*' -o -name 'work-*' \) \
        ! -name "rootfs-base-$BASE_HASH" -exec rm -rf {} +
    for name in "${names[@]}"; do
        "build_$name"
    done
    for name in "${names[@]}"; do
        tag_of "$name"
    done
    # Root filesystems are only kept while another image still needs them.
    local keep_base=
    for name in $FROM_BASE_ROOTFS; do
        image_exists "$(tag_of "$name")" || keep_base=1
    done
    [[ -n $keep_base ]] || rm -rf "$CACHE"/rootfs-base-*
    log "total $(elapsed "$t")"
}

# Every edit of this script makes new hashed tags (~300 MB each); on a
# developer's machine drop the old ones now and then. Images still used by a
# container stay (rmi refuses). Not done automatically: another work tree's
# build.sh may be using those tags right now.
prune_old_tags() {
    local ref keep name
    keep=" $(for name in $ALL_IMAGES; do tag_of "$name"; done | tr '\n' ' ') "
    while IFS= read -r ref; do
        case $ref in
            *:latest | *:"<none>") continue ;;
        esac
        [[ $keep == *" $ref "* ]] && continue
        docker rmi "$ref" >/dev/null 2>&1 || true
    done < <(docker images --format '{{.Repository}}:{{.Tag}}' --filter label=bosun.test-image)
}

main "$@"
