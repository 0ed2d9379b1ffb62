#!/bin/sh
# Builds a local Vagrant box (provider libvirt) of Debian 12 from Debian's mirror, for
# machines where no box can be downloaded: `SLIPSTREAM_VAGRANT_LOCAL=1 vagrant up` uses it.
# See /work/shared/VM.md for what was measured; in short:
#   - mmdebstrap makes the root filesystem (about 2 min), with the newest 6.1 kernel from
#     bookworm-security, a `vagrant` user with passwordless sudo and a key generated here;
#   - the disk has no bootloader: qemu boots the kernel and initrd copied out of the root
#     filesystem (the Vagrantfile passes them to libvirt), so the guest runs Debian's kernel
#     with its modules and its headers package available from the mirror;
#   - networking is qemu's user mode only (slirp): DHCP from 10.0.2.2, DNS at 10.0.2.3.
#
#   vagrant/box/build.sh [OUT_DIR]     (default: .vm/box in the repository; root needed)
#
# The Debian packages of the project's setup are installed in the box here, by the project's
# own scripts/setup.sh --packages-only in the root filesystem: natively that takes minutes,
# in the emulated guest half an hour (SLIPSTREAM_BOX_PACKAGES=0 leaves them to provisioning).
# dpkg in the box skips fsync (force-unsafe-io): the VM is a throwaway.
#
# Writes OUT_DIR/slipstream-bookworm.box, vmlinuz, initrd.img, vagrant_key (private key).
# Safe to run again: it rebuilds only when this script or scripts/setup.sh is newer than the box.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/.vm/box}
BOX="$OUT/slipstream-bookworm.box"
SIZE_GB=16
MIRROR=${SLIPSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${SLIPSTREAM_DEBIAN_SECURITY:-http://security.debian.org/debian-security}
say() { printf 'box: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "box: must run as root (mmdebstrap in root mode, mkfs.ext4 -d of a root filesystem)" >&2
    exit 1
fi
if [ -e "$BOX" ] && [ -e "$OUT/vmlinuz" ] && [ -e "$OUT/initrd.img" ] \
    && [ -e "$OUT/vagrant_key" ] && [ ! "$0" -nt "$BOX" ] \
    && [ ! "$ROOT/scripts/setup.sh" -nt "$BOX" ]; then
    say "$BOX is up to date"
    exit 0
fi

mkdir -p "$OUT"
WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

# One key per build, never Vagrant's public insecure key: the guest's SSH is forwarded to
# 127.0.0.1 only, but a well-known key would still let any local user in.
rm -f "$OUT/vagrant_key" "$OUT/vagrant_key.pub"
ssh-keygen -q -t ed25519 -N "" -C "slipstream-vagrant-box" -f "$OUT/vagrant_key"

# A machine behind a TLS-inspecting egress proxy trusts its CA through
# /usr/local/share/ca-certificates: the guest's HTTPS (PyPI for setup's virtualenv) goes
# through the same proxy, so the box trusts the same certificates, and pip uses the system
# bundle rather than its own.
CA_HOOK=true
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    CA_HOOK="cp /usr/local/share/ca-certificates/*.crt \"\$1/usr/local/share/ca-certificates/\" && chroot \"\$1\" update-ca-certificates && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > \"\$1/etc/pip.conf\""
fi
PACKAGES_HOOK=true
if [ "${SLIPSTREAM_BOX_PACKAGES:-1}" = 1 ]; then
    PACKAGES_HOOK="cp '$ROOT/scripts/setup.sh' \"\$1/tmp/setup.sh\" && chroot \"\$1\" sh /tmp/setup.sh --packages-only && rm \"\$1/tmp/setup.sh\""
fi

say "root filesystem from $MIRROR (bookworm + bookworm-updates + bookworm-security)"
start=$(date +%s)
mmdebstrap --variant=apt \
    --include=linux-image-amd64,systemd-sysv,udev,kmod,openssh-server,sudo,iproute2,ca-certificates,procps,qemu-guest-agent,rsync,make,curl,less \
    --customize-hook='echo slipstream > "$1/etc/hostname"' \
    --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 slipstream\n" > "$1/etc/hosts"' \
    --customize-hook='echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$1/etc/fstab"' \
    --customize-hook='printf "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n" > "$1/etc/systemd/network/10-eth0.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
    --customize-hook="$CA_HOOK" \
    --customize-hook="$PACKAGES_HOOK" \
    --customize-hook='rm -f "$1/etc/resolv.conf"; echo "nameserver 10.0.2.3" > "$1/etc/resolv.conf"' \
    --customize-hook='chroot "$1" useradd --create-home --shell /bin/bash vagrant' \
    --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"; chmod 0440 "$1/etc/sudoers.d/vagrant"' \
    --customize-hook="mkdir -p \"\$1/home/vagrant/.ssh\" && cp '$OUT/vagrant_key.pub' \"\$1/home/vagrant/.ssh/authorized_keys\"" \
    --customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh; chmod 0700 "$1/home/vagrant/.ssh"; chmod 0600 "$1/home/vagrant/.ssh/authorized_keys"' \
    --customize-hook='echo "UseDNS no" > "$1/etc/ssh/sshd_config.d/vagrant.conf"' \
    --customize-hook='echo force-unsafe-io > "$1/etc/dpkg/dpkg.cfg.d/unsafe-io"' \
    --customize-hook="cp \"\$1\"/boot/vmlinuz-* '$WORK/vmlinuz' && cp \"\$1\"/boot/initrd.img-* '$WORK/initrd.img'" \
    bookworm "$WORK/rootfs" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main"
say "root filesystem in $(($(date +%s) - start)) s: kernel $(ls "$WORK/rootfs/lib/modules")"

# A disk without partitions or bootloader (the kernel is booted by qemu), sparse until used.
truncate -s "${SIZE_GB}G" "$WORK/root.raw"
mkfs.ext4 -q -L root -d "$WORK/rootfs" "$WORK/root.raw"
rm -rf "$WORK/rootfs"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/box.img"
rm -f "$WORK/root.raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$SIZE_GB" \
    > "$WORK/metadata.json"
# Uncompressed: the image is already compact and vagrant unpacks it once.
tar -C "$WORK" -cf "$WORK/box.tar" metadata.json box.img
mv "$WORK/vmlinuz" "$WORK/initrd.img" "$OUT/"
mv "$WORK/box.tar" "$BOX"
say "built $BOX ($(du -h "$BOX" | cut -f1)) in $(($(date +%s) - start)) s"
