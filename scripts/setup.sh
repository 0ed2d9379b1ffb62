#!/bin/sh
# One-shot host setup for Slipstream on Debian 12, as root. Safe to run again:
# every step checks first and only does what is missing.
#
#   1. Debian packages: bcc (python3-bpfcc), kernel headers, iproute2, and the
#      real peers the tests and benchmarks use (stunnel, nginx, redis, wrk, an
#      embedded Tomcat for servlet path semantics...; ruby, to check vagrant/Vagrantfile).
#   2. Kernel-header links for bcc when /lib/modules/$(uname -r) has none
#      (see ENVIRONMENT.md); a machine with its own matching headers is left alone.
#   3. A virtualenv in .venv made from Debian's /usr/bin/python3 (the only
#      interpreter python3-bpfcc belongs to), with bcc linked in and the project
#      installed in editable mode.
#
#   setup.sh --packages-only   step 1 alone (vagrant/box/build.sh runs it in the box's root
#                              filesystem, natively, instead of in the emulated guest)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (bcc, network namespaces and apt need it)" >&2
    exit 1
fi

# --- 1. Debian packages ------------------------------------------------------
PACKAGES="python3 python3-venv python3-dev python3-bpfcc bpfcc-tools libbpfcc
linux-headers-amd64 iproute2 iptables tcpdump stunnel4 nginx redis-server
haproxy wrk nghttp2-client iperf3 nodejs procps psmisc make gcc curl
util-linux openjdk-17-jdk-headless libtomcat10-embed-java libjakarta-annotation-api-java
containernetworking-plugins ruby"
# kubectl for the lab's kubectl tests and users: Debian 12's kubernetes-client (kubectl
# 1.20) where no kubectl is present; a machine that has one (this project's images have
# kubectl 1.32 from google-cloud-cli at /usr/bin/kubectl) keeps it.
if ! command -v kubectl >/dev/null 2>&1; then
    PACKAGES="$PACKAGES kubernetes-client"
fi

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    # Package scripts must not start nginx or redis in the machine's root
    # namespace: the tests start their own, inside namespaces they create.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
else
    say "Debian packages present"
fi
if [ "${1:-}" = --packages-only ]; then
    say "--packages-only: done"
    exit 0
fi

# --- 2. kernel headers for bcc -----------------------------------------------
KVER=$(uname -r)
MODDIR="/lib/modules/$KVER"
# A Debian kernel (the VM in vagrant/) gets its own headers package when linux-headers-amd64
# brought a newer one; a kernel no package installed (this project's CI hosts) gets links below.
if [ ! -e "$MODDIR/build" ] && dpkg-query -S "/boot/vmlinuz-$KVER" >/dev/null 2>&1; then
    say "installing linux-headers-$KVER for the running Debian kernel"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "linux-headers-$KVER" \
        || say "linux-headers-$KVER is not on the mirror: falling back to links"
fi
if [ -e "$MODDIR/build" ]; then
    case "$(readlink "$MODDIR/build" 2>/dev/null)" in
        /usr/src/linux-headers-*-amd64) say "kernel-header links for $KVER present ($(readlink "$MODDIR/build"))" ;;
        *) say "kernel headers for $KVER present, left alone" ;;
    esac
else
    HDR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$HDR" ]; then
        echo "setup: no /usr/src/linux-headers-*-amd64 found; install linux-headers-amd64" >&2
        exit 1
    fi
    COMMON="${HDR%-amd64}-common"
    mkdir -p "$MODDIR"
    ln -sfn "$HDR" "$MODDIR/build"
    ln -sfn "$COMMON" "$MODDIR/source"
    say "no headers matched kernel $KVER: linked $MODDIR/build -> $HDR and source -> $COMMON"
    say "(bcc needs only the uapi headers for Slipstream's networking programs)"
fi

# --- 3. virtualenv -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV from /usr/bin/python3"
    /usr/bin/python3 -m venv "$VENV"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BCC=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))')
if [ "$(readlink "$SITE/bcc" 2>/dev/null)" != "$BCC" ]; then
    # Only bcc is taken from Debian; everything else comes from PyPI so the
    # versions are the ones pyproject.toml names.
    ln -sfn "$BCC" "$SITE/bcc"
    say "linked bcc from $BCC into the virtualenv"
fi

STAMP="$VENV/.installed"
if [ ! -e "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    say "installing Python dependencies"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
    touch "$STAMP"
else
    say "Python dependencies up to date"
fi
"$VENV/bin/python" -c 'import bcc, pyroute2, aiohttp, h2, cryptography' \
    || { echo "setup: the virtualenv cannot import its dependencies" >&2; exit 1; }
say "ready"
