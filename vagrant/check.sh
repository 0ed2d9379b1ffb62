#!/bin/sh
# `make vm`: the end-to-end check of vagrant/ on this machine, as root (not in CI: about
# 35-45 minutes under software emulation on 2 shared cores). It
#   1. installs what it needs from Debian (qemu, mmdebstrap, vagrant, vagrant-libvirt and
#      libvirt without libvirt-daemon-system, which would bring a NAT network);
#   2. builds the local box (vagrant/box/build.sh, cached in .vm/box);
#   3. starts a libvirtd of its own (private qemu.conf, a transient storage pool in .vm/pool),
#      `vagrant up` with SLIPSTREAM_VAGRANT_LOCAL=1 (qemu user networking, SSH on 127.0.0.1),
#      provisioning (scripts/setup.sh in the guest, then the k3s step, which skips without
#      internet);
#   4. runs lab tests inside the guest (eBPF capture and mTLS on the wire), then
#      `vagrant destroy -f`;
#   5. always: stops the libvirtd and any qemu it started, by PID, and removes the users,
#      files and state it created (the box in .vm/box stays as a cache).
# No libvirt network, bridge or tap is created: the guest's only NIC is qemu's user network.
#
# VM_TESTS overrides the tests run in the guest; SLIPSTREAM_INTERPRETED=0 compiles the gateway
# with mypyc in the guest too (default here: interpreted, the build is slow under emulation).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VM="$ROOT/.vm"
RUN="$VM/run"
POOL=slipstream-vm
BOX_NAME=slipstream/bookworm-local
PORT=${SLIPSTREAM_VM_SSH_PORT:-2223}
VM_TESTS=${VM_TESTS:-"tests/lab/test_mesh.py::test_traffic_between_enrolled_pods_crosses_the_bridge_encrypted tests/lab/test_capture.py::test_outbound_same_and_cross_node_is_captured_and_servers_see_the_client"}
PACKAGES="qemu-system-x86 qemu-utils mmdebstrap vagrant vagrant-libvirt libvirt-daemon
libvirt-daemon-driver-qemu libvirt-clients rsync openssh-client ruby"
LIBVIRT_DIRS="/etc/libvirt /var/lib/libvirt /var/cache/libvirt /run/libvirt /var/log/libvirt"
say() { printf 'vm: %s\n' "$*"; }
T0=$(date +%s)
TIMINGS=""
lap() {  # name start: records a step's wall clock
    TIMINGS="$TIMINGS$(printf '  %-26s %4d s' "$1" $(($(date +%s) - $2)))
"
}

if [ "$(id -u)" != 0 ]; then
    echo "vm: must run as root (libvirtd, mmdebstrap, apt)" >&2
    exit 1
fi
if pgrep -x libvirtd >/dev/null; then
    echo "vm: a libvirtd is already running; this check starts and stops its own" >&2
    exit 1
fi
if ss -Htln "sport = :$PORT" | grep -q .; then
    echo "vm: 127.0.0.1:$PORT is taken (SLIPSTREAM_VM_SSH_PORT picks another)" >&2
    exit 1
fi

# --- 1. packages -----------------------------------------------------------------------
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

# --- 2. the box --------------------------------------------------------------------------
t=$(date +%s)
"$ROOT/vagrant/box/build.sh" "$VM/box"
lap "box build (cached if 0)" "$t"

# --- 3. libvirtd of our own, and what to undo ----------------------------------------------
mkdir -p "$RUN"
rm -rf "$VM/pool" "$VM/vagrant.d" "$VM/dot"
mkdir -p "$VM/pool"
created_user=""
created_group=""
conf_backup=""
new_entries=""
for d in $LIBVIRT_DIRS; do
    if [ -d "$d" ]; then
        ls -A "$d" | sed "s|^|$d/|" > "$RUN/before.$(echo "$d" | tr / _)"
    else
        : > "$RUN/before.$(echo "$d" | tr / _)"
    fi
done
libvirtd_pid=""
qemu_pids=""

export VAGRANT_HOME="$VM/vagrant.d"
export VAGRANT_DOTFILE_PATH="$VM/dot"
export VAGRANT_CWD="$ROOT/vagrant"
export VAGRANT_CHECKPOINT_DISABLE=1
export SLIPSTREAM_VAGRANT_LOCAL=1
export SLIPSTREAM_VM_DIR="$VM"
export SLIPSTREAM_VM_POOL="$POOL"
export SLIPSTREAM_VM_SSH_PORT="$PORT"
export SLIPSTREAM_INTERPRETED="${SLIPSTREAM_INTERPRETED:-1}"
[ "$SLIPSTREAM_INTERPRETED" = 0 ] && SLIPSTREAM_INTERPRETED=""
export LIBVIRT_DEFAULT_URI=qemu:///system
up=""

cleanup() {
    rc=$?
    set +e
    if [ "$rc" != 0 ]; then
        for f in /var/log/libvirt/qemu/*.log; do
            [ -e "$f" ] && { say "last lines of $f:"; tail -n 20 "$f"; }
        done
    fi
    if [ -n "$up" ]; then
        say "cleanup: vagrant destroy -f"
        vagrant destroy -f >/dev/null 2>&1
    fi
    for pid in $qemu_pids; do
        if kill -0 "$pid" 2>/dev/null; then
            say "cleanup: stopping qemu $pid"
            kill "$pid"
        fi
    done
    if [ -n "$libvirtd_pid" ]; then
        virsh pool-destroy "$POOL" >/dev/null 2>&1
        say "cleanup: stopping libvirtd $libvirtd_pid"
        kill "$libvirtd_pid"
        for _ in $(seq 50); do kill -0 "$libvirtd_pid" 2>/dev/null || break; sleep 0.2; done
    fi
    for pid in $qemu_pids; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null
    done
    # Whatever libvirtd made under its directories since we started (state, logs, sockets).
    for d in $LIBVIRT_DIRS; do
        before="$RUN/before.$(echo "$d" | tr / _)"
        [ -d "$d" ] || continue
        ls -A "$d" | sed "s|^|$d/|" | while read -r e; do
            grep -qxF "$e" "$before" || rm -rf "$e"
        done
        [ -s "$before" ] || rmdir "$d" 2>/dev/null
    done
    if [ -n "$conf_backup" ]; then
        mv "$conf_backup" /etc/libvirt/qemu.conf
    else
        rm -f /etc/libvirt/qemu.conf
    fi
    [ -n "$created_user" ] && userdel libvirt-qemu
    [ -n "$created_group" ] && getent group libvirt-qemu >/dev/null && groupdel libvirt-qemu
    rm -rf "$VM/pool" "$VM/vagrant.d" "$VM/dot" "$RUN"
    say "timings (wall clock):"
    printf '%s' "$TIMINGS"
    say "total $(($(date +%s) - T0)) s; $([ "$rc" = 0 ] && echo OK || echo "FAILED ($rc)")"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# libvirt runs qemu as root here (there is no session bus or systemd on these machines), with
# no security driver and qemu's output in files: no virtlogd, no dynamic ownership.
if [ -e /etc/libvirt/qemu.conf ]; then
    conf_backup="$RUN/qemu.conf.orig"
    cp -p /etc/libvirt/qemu.conf "$conf_backup"
fi
mkdir -p /etc/libvirt
cat > /etc/libvirt/qemu.conf <<'EOF'
# Written by slipstream's vagrant/check.sh for its own libvirtd; removed when it ends.
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
stdio_handler = "file"
EOF
if ! getent group libvirt-qemu >/dev/null; then
    groupadd --system libvirt-qemu
    created_group=1
fi
if ! getent passwd libvirt-qemu >/dev/null; then
    useradd --system --no-create-home --shell /usr/sbin/nologin -g libvirt-qemu libvirt-qemu
    created_user=1
fi

# shellcheck disable=SC2086
mkdir -p $LIBVIRT_DIRS
libvirtd --daemon --pid-file "$RUN/libvirtd.pid"
for _ in $(seq 100); do
    [ -s "$RUN/libvirtd.pid" ] && virsh version >/dev/null 2>&1 && break
    sleep 0.2
done
libvirtd_pid=$(cat "$RUN/libvirtd.pid")
say "libvirtd $libvirtd_pid"
# A transient pool in .vm/pool: the box's volume never lands in /var/lib/libvirt/images.
virsh pool-create-as "$POOL" dir --target "$VM/pool" >/dev/null

# --- 4. vagrant up, provision, test, destroy ------------------------------------------------
vagrant box add --force --name "$BOX_NAME" "$VM/box/slipstream-bookworm.box"
t=$(date +%s)
up=1
vagrant up --provider=libvirt --no-provision
lap "vagrant up (boot)" "$t"
# The domain's pid file (driver.pid beside it is libvirtd's own lock).
for f in /run/libvirt/qemu/*.pid; do
    [ "$f" = /run/libvirt/qemu/driver.pid ] && continue
    [ -e "$f" ] && qemu_pids="$qemu_pids $(cat "$f")"
done
say "qemu:$qemu_pids"
# What must stay true: libvirt manages no network, and the machine got no new interface.
nets=$(virsh net-list --all --name | grep -v '^$' || true)
[ -z "$nets" ] || { echo "vm: libvirt has networks: $nets" >&2; exit 1; }

t=$(date +%s)
vagrant provision
lap "provisioning (setup.sh, k3s)" "$t"

t=$(date +%s)
say "in the guest: $VM_TESTS"
# Emulation is several times slower than the host: the per-test timeout (60 s) is raised,
# and vagrant/slow_guest.py multiplies the lab's start-up deadlines and the tests' waits by
# SLIPSTREAM_SLOW_FACTOR (run 2 of this check: the lab's API server missed its 30 s). The
# project's modules are byte-compiled first, as the first import would.
vagrant ssh -c "uname -r && cd /slipstream && sudo .venv/bin/python -m compileall -q agent \
    gateway tests >/dev/null && sudo env SLIPSTREAM_REQUIRE_LAB=1 PYTHONPATH=/slipstream/vagrant \
    SLIPSTREAM_SLOW_FACTOR=${SLIPSTREAM_SLOW_FACTOR:-10} .venv/bin/pytest -p no:cacheprovider \
    -p slow_guest --timeout=1200 -q $VM_TESTS"
lap "lab tests in the guest" "$t"

t=$(date +%s)
vagrant destroy -f
up=""
lap "vagrant destroy" "$t"
