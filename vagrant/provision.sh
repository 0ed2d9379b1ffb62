#!/bin/sh
# Vagrant provisioning, inside the guest as root: the project's own setup on the synced
# repository (/slipstream), the same scripts a host runs for `make setup` — not a copy.
# SLIPSTREAM_INTERPRETED=1 (passed through by the Vagrantfile) skips the mypyc build, which
# takes long under software emulation.
set -eu
say() { printf 'provision: %s\n' "$*"; }

kver=$(uname -r)
say "kernel $kver"
# The mesh needs 5.10 (BPF, BTF, clsact, bpf_sk_assign); the VM promises Debian 12's 6.1.
case "$kver" in
    [0-5].*|6.0.*) echo "provision: kernel $kver is older than 6.1" >&2; exit 1 ;;
esac
[ -e /sys/kernel/btf/vmlinux ] || { echo "provision: no BTF in kernel $kver" >&2; exit 1; }

/slipstream/scripts/setup.sh
if [ "${SLIPSTREAM_INTERPRETED:-}" = 1 ]; then
    say "SLIPSTREAM_INTERPRETED=1: the gateway runs as plain Python (no mypyc build)"
fi
SLIPSTREAM_INTERPRETED=${SLIPSTREAM_INTERPRETED:-} /slipstream/scripts/compile.sh
say "done: cd /slipstream && sudo make demo"
