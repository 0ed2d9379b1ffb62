#!/bin/sh
# Builds the container image slipstream:dev (deploy/image/Containerfile) with Debian's
# podman, as root, without a registry and without a network inside the build:
#
#   1. Debian packages: podman (which builds with buildah's code), runc, mmdebstrap, python3-venv.
#   2. The build context: the wheel of this tree (HEAD plus uncommitted changes to tracked
#      files) and the wheels of its dependencies at the versions deploy/image/requirements.txt
#      pins, built on the host (same Debian, same Python 3.11 as the image).
#   3. The base: a Debian 12 root made by mmdebstrap from the host's own apt sources, with
#      the image's packages (bcc, python3, iproute2...) already in it, imported as
#      localhost/slipstream-base:bookworm. Made once and kept in .image/;
#      SLIPSTREAM_IMAGE_REBASE=1 makes it again (for Debian's updates).
#      SLIPSTREAM_IMAGE_BASE=docker.io/library/debian:bookworm-slim (or another Debian 12)
#      uses a registry's base instead, where one can be reached; the build then installs the
#      packages itself, with the host's network (not reproducible: apt's state is dated).
#   4. podman build --network=none --timestamp=<commit time>: the same commit and base give
#      the same image ID. The image's older build under the same tag is removed.
#      SLIPSTREAM_IMAGE names it (localhost/slipstream:dev).
#
#   scripts/image.sh           build (what `make image` runs)
#   scripts/image.sh --lock    re-resolve pyproject.toml's dependencies into the lock file
#   scripts/image.sh --twice   build twice from scratch and compare the image IDs
#
# Never podman's default network: it would make a bridge and NAT in the machine's namespace.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Not build/: scripts/compile.sh removes that whole directory when it rebuilds.
OUT="$ROOT/.image"
IMAGE=${SLIPSTREAM_IMAGE:-localhost/slipstream:dev}
BASE_IMAGE=localhost/slipstream-base:bookworm
LOCK="$ROOT/deploy/image/requirements.txt"
CONTAINERFILE="$ROOT/deploy/image/Containerfile"
say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (podman's storage and mmdebstrap's root mode)"
MODE=${1:-build}
case "$MODE" in build | --lock | --twice) ;; *) die "unknown argument $MODE" ;; esac

# --- 1. Debian packages --------------------------------------------------------
missing=""
for p in podman runc mmdebstrap python3-venv git; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# --- 2. wheels (and the lock) ----------------------------------------------------
TOOLS="$OUT/tools"
if [ ! -x "$TOOLS/bin/pip" ]; then
    /usr/bin/python3 -m venv "$TOOLS"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The tree to build: committed HEAD, or a commit of the uncommitted changes to tracked files
# (git stash create changes nothing in the work tree or the stash list).
cd "$ROOT"
TREE=$(git stash create)
[ -n "$TREE" ] || TREE=$(git rev-parse HEAD)
REVISION=$(git rev-parse HEAD)
[ "$TREE" = "$REVISION" ] || REVISION="$REVISION-dirty"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
export SOURCE_DATE_EPOCH
rm -rf "$OUT/src" && mkdir -p "$OUT/src"
git archive "$TREE" | tar -x -C "$OUT/src"

if [ "$MODE" = --lock ]; then
    rm -rf "$OUT/lock" && mkdir -p "$OUT/lock"
    "$TOOLS/bin/pip" wheel -q --prefer-binary --wheel-dir "$OUT/lock" "$OUT/src" pip
    {
        echo "# Versions of the image's Python packages (scripts/image.sh --lock writes this file)."
        ls "$OUT/lock" | grep -v '^slipstream-' \
            | sed 's/^\([^-]*\)-\([^-]*\)-.*/\1==\2/' | tr '_' '-' | LC_ALL=C sort -f
    } > "$LOCK"
    say "wrote $LOCK"
    exit 0
fi

CONTEXT="$OUT/context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/wheels"
say "building wheels of $REVISION and its dependencies"
"$TOOLS/bin/pip" wheel -q --prefer-binary --constraint "$LOCK" --wheel-dir "$CONTEXT/wheels" \
    "$OUT/src" pip
# A dependency missing from the lock would come in at whatever version is newest today.
for w in "$CONTEXT"/wheels/*.whl; do
    name=$(basename "$w" | sed 's/-.*//' | tr '_' '-')
    [ "$name" = slipstream ] && continue
    grep -qi "^$name==" "$LOCK" || die "$name is not in $LOCK: run scripts/image.sh --lock"
done

# --- 3. the base -----------------------------------------------------------------
# The packages are the Containerfile's own list, so the two cannot drift apart.
PACKAGES=$(sed -n 's/^ARG PACKAGES="\(.*\)"$/\1/p' "$CONTAINERFILE")
[ -n "$PACKAGES" ] || die "no ARG PACKAGES line in $CONTAINERFILE"
if [ -n "${SLIPSTREAM_IMAGE_BASE:-}" ]; then
    BASE="$SLIPSTREAM_IMAGE_BASE"
    NETWORK=host # apt-get inside the build; host: no bridge is made
    PULL=missing
    say "base $BASE from a registry (its packages are installed in the build)"
else
    BASE="$BASE_IMAGE"
    NETWORK=none
    PULL=never # a local name, not a registry's
    ROOTFS="$OUT/rootfs"
    mkdir -p "$ROOTFS"
    # The mirrors are the host's own (this is a Debian 12 machine), security updates included.
    SOURCES=/etc/apt/sources.list.d/debian.sources
    [ -e "$SOURCES" ] || SOURCES=/etc/apt/sources.list
    # Slim as Debian's -slim images are: no manuals, documentation or translations
    # (the copyright files stay), and merged /usr without the usrmerge package (and its Perl).
    set -- --variant=apt --include="$(echo $PACKAGES | tr ' ' ,)" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' --skip=output/dev --format=tar \
        bookworm "$ROOTFS/debian.tar.new" "$SOURCES"
    if [ "${SLIPSTREAM_IMAGE_REBASE:-}" = 1 ] || [ ! -e "$ROOTFS/debian.tar" ] \
        || [ "$(cat "$ROOTFS/args" 2>/dev/null)" != "$*" ]; then
        say "making the Debian 12 base with mmdebstrap (about a minute)"
        rm -rf "$ROOTFS/debian.tar.new"
        if ! mmdebstrap "$@" < /dev/null > "$ROOTFS/mmdebstrap.log" 2>&1; then
            tail -20 "$ROOTFS/mmdebstrap.log" >&2
            die "mmdebstrap failed (all of its output: $ROOTFS/mmdebstrap.log)"
        fi
        mv "$ROOTFS/debian.tar.new" "$ROOTFS/debian.tar"
        echo "$*" > "$ROOTFS/args"
    fi
    SUM=$(sha256sum "$ROOTFS/debian.tar" | cut -d' ' -f1)
    if [ "$(podman image inspect --format '{{index .Labels "dev.slipstream.rootfs"}}' \
        "$BASE_IMAGE" 2>/dev/null)" != "$SUM" ]; then
        old=$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
        say "importing the base as $BASE_IMAGE"
        cp "$ROOT/deploy/image/base.Containerfile" "$ROOTFS/Containerfile"
        podman build --quiet --network=none --pull=never --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
            --label "dev.slipstream.rootfs=$SUM" -t "$BASE_IMAGE" "$ROOTFS" > /dev/null
        [ -z "$old" ] || podman rmi "$old" > /dev/null 2>&1 || true
    fi
fi

# --- 4. the image ------------------------------------------------------------------
# How these machines run containers (tests/image/test_image.py does the same): runc, as crun
# refuses a hybrid cgroup layout; and limits no higher than our own, as podman's defaults need
# CAP_SYS_RESOURCE, which root here does not have (processes: at most 32768, as runc was
# refused even our own hard limit of 96370 here, for a reason not found).
NOFILE=$(ulimit -Hn)
NPROC=$(awk '/^Max processes/ {print $4}' /proc/self/limits)
if [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; then NPROC=32768; fi
RUNTIME="--runtime=runc --ulimit=nofile=$NOFILE:$NOFILE --ulimit=nproc=$NPROC:$NPROC"
build() {
    old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    # No cache: the wheels come in through a bind mount, which a cached layer would ignore;
    # no intermediate images left behind either.
    # shellcheck disable=SC2086
    podman build $RUNTIME --quiet --network="$NETWORK" --pull="$PULL" --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
        --build-arg SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" --build-arg REVISION="$REVISION" \
        --build-arg BASE="$BASE" -f "$CONTAINERFILE" -t "$IMAGE" "$CONTEXT" > /dev/null
    new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        podman rmi "$old" > /dev/null 2>&1 || true
    fi
    echo "$new"
}

say "building $IMAGE from $BASE (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
first=$(build)
say "built $IMAGE: $first"
if [ "$MODE" = --twice ]; then
    # The first build keeps a second tag, so that if the two differ, both are there to compare.
    podman tag "$first" "$IMAGE-first"
    second=$(build)
    say "built again:    $second"
    if [ "$first" != "$second" ]; then
        die "the two builds differ: compare $IMAGE-first and $IMAGE (podman image diff)"
    fi
    podman untag "$first" "$IMAGE-first"
    say "reproducible: both builds gave the same image ID"
fi
