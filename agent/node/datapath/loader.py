"""Compiling and loading the capture programs: the only module that imports bcc.

The programs are compiled once per agent start from bpf/*.c (package data of the
`bpf` package, found through importlib.resources), the mirror in
abi.py is checked against the compiled map types, and mesh_config is filled.
This module also owns every later touch of the programs' maps (which pods are
enrolled, where their listeners are, which sockets are the agent's own) and the
sk_lookup links into pods.
Attaching the tc programs to pods is pod.py's job.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import logging
import os
import pathlib
import socket
import struct
from dataclasses import dataclass
from typing import Any

import bpf

from . import abi

log = logging.getLogger("agent.datapath")

BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_SK_LOOKUP = 36
BPF_LINK_CREATE = 28
SYS_BPF = 321  # x86_64
SO_COOKIE = 57  # asm-generic/socket.h; the socket module does not name it

_libc = ctypes.CDLL(None, use_errno=True)


class DatapathError(abi.SlipstreamError):
    """The eBPF programs could not be compiled, checked, loaded or attached."""


def packaged_bpf_dir() -> str:
    """The directory of the `bpf` package: the checkout's bpf/, or site-packages/bpf/ of an
    installed copy (the programs and mesh.h are its package data)."""
    root = importlib.resources.files(bpf)
    if not isinstance(root, pathlib.Path):  # a zipped install: bcc needs real files
        raise DatapathError(f"the bpf package is not a directory of files ({root})")
    return str(root)


def bpf_dir() -> str:
    """Where the programs are compiled from; SLIPSTREAM_BPF_DIR points elsewhere (tests use
    it to load programs whose header was changed on purpose)."""
    return os.environ.get("SLIPSTREAM_BPF_DIR") or packaged_bpf_dir()


@dataclass
class Program:
    name: str
    fd: int


class _LinkCreate(ctypes.Structure):
    """union bpf_attr, as BPF_LINK_CREATE reads it (the rest must be zero)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("rest", ctypes.c_uint8 * 48),
    ]


def _ip_key(ip: str) -> ctypes.c_uint32:
    # The programs key pods by the address as it sits in the packet (network order).
    return ctypes.c_uint32(int.from_bytes(socket.inet_aton(ip), "little"))


class Programs:
    """The loaded capture programs and their maps."""

    def __init__(self, directory: str | None = None) -> None:
        directory = directory or bpf_dir()
        try:
            from bcc import BPF  # the one import of bcc in Slipstream
            from bcc.libbcc import lib
        except ImportError as exc:
            raise DatapathError(
                "bcc is not importable: install python3-bpfcc (make setup does)"
            ) from exc
        self._lib = lib
        # One compilation unit, so the programs share their maps. bcc only takes
        # functions of the main file as programs, hence the files are joined, not included.
        sources = []
        for name in abi.PROGRAMS:
            path = os.path.join(directory, f"{name}.c")
            try:
                with open(path) as f:
                    sources.append(f'#line 1 "{path}"\n{f.read()}')
            except OSError as exc:
                raise DatapathError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            self._bpf: Any = BPF(text="\n".join(sources).encode(), cflags=[f"-I{directory}"])
        except Exception as exc:  # bcc raises plain Exception on compile errors
            raise DatapathError(f"compiling {directory}/*.c failed: {exc}") from exc
        self.check_abi()
        self.programs: dict[str, Program] = {}
        for name in abi.PROGRAMS:
            try:
                if name == abi.LOOKUP_PROGRAM:
                    fn = self._bpf.load_func(
                        name.encode(), BPF_PROG_TYPE_SK_LOOKUP, None, BPF_SK_LOOKUP
                    )
                else:
                    fn = self._bpf.load_func(name.encode(), BPF.SCHED_CLS)
            except Exception as exc:
                raise DatapathError(f"the kernel refused program {name}: {exc}") from exc
            self.programs[name] = Program(name, fn.fd)
        self._listeners_fd = self._map_fd(abi.LISTENERS_MAP)
        self._own_fd = self._map_fd(abi.OWN_SOCKS_MAP)
        self.write_config(abi.default_config())
        log.info("capture programs loaded", extra={"programs": ",".join(self.programs)})

    def _map_fd(self, name: str) -> int:
        fd = int(self._lib.bpf_table_fd(self._bpf.module, name.encode()))
        if fd < 0:
            raise DatapathError(f"map {name} is missing from the compiled programs")
        return fd

    def check_abi(self) -> None:
        for (map_name, part), mirror in abi.MIRRORS.items():
            try:
                table = self._bpf[map_name.encode()]
            except KeyError:
                raise abi.AbiError(
                    f"map {map_name} is missing from the compiled programs"
                ) from None
            # Per-CPU maps expose one value per CPU as Leaf; sLeaf is the element.
            compiled = table.Key if part == "key" else getattr(table, "sLeaf", table.Leaf)
            abi.check_struct(f"{map_name} {part}", compiled, mirror)

    # ------------------------------------------------------------ maps

    def write_config(self, config: abi.MeshConfig) -> None:
        table = self._bpf[abi.CONFIG_MAP.encode()]
        table[ctypes.c_int(0)] = table.Leaf.from_buffer_copy(bytes(config))

    def config(self) -> abi.MeshConfig:
        """mesh_config as the programs read it."""
        leaf = self._bpf[abi.CONFIG_MAP.encode()][ctypes.c_int(0)]
        return abi.MeshConfig.from_buffer_copy(bytes(leaf))

    def counters(self) -> dict[str, int]:
        """mesh_counters summed over CPUs."""
        table = self._bpf[abi.COUNTERS_MAP.encode()]
        totals = dict.fromkeys((f[0] for f in abi.MeshCounters._fields_), 0)
        for per_cpu in table.getvalue(ctypes.c_int(0)):
            for name in totals:
                totals[name] += getattr(per_cpu, name)
        return totals

    def set_pod(self, ip: str, outbound_slot: int, inbound_slot: int) -> None:
        table = self._bpf[abi.PODS_MAP.encode()]
        table[_ip_key(ip)] = table.Leaf(outbound_slot, inbound_slot)

    def del_pod(self, ip: str) -> None:
        table = self._bpf[abi.PODS_MAP.encode()]
        with contextlib.suppress(KeyError):
            del table[_ip_key(ip)]

    def pods(self) -> dict[str, tuple[int, int]]:
        table = self._bpf[abi.PODS_MAP.encode()]
        return {
            socket.inet_ntoa(k.value.to_bytes(4, "little")): (v.outbound_slot, v.inbound_slot)
            for k, v in table.items()
        }

    def set_listener(self, slot: int, fd: int) -> None:
        key, value = ctypes.c_uint32(slot), ctypes.c_uint64(fd)
        if (
            self._lib.bpf_update_elem(self._listeners_fd, ctypes.byref(key), ctypes.byref(value), 0)
            != 0
        ):
            err = ctypes.get_errno()
            raise DatapathError(f"adding a listener to {abi.LISTENERS_MAP}: {os.strerror(err)}")

    def own(self, sock: socket.socket) -> socket.socket:
        """Register one of the agent's own sockets in a pod, before it connects: its SYN,
        marked agent_mark, then leaves the pod uncaptured (a marked SYN from any other
        socket is captured). Raises OSError, as making the socket would."""
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
        key, value = ctypes.c_uint64(struct.unpack("=Q", raw)[0]), ctypes.c_uint8(1)
        if self._lib.bpf_update_elem(self._own_fd, ctypes.byref(key), ctypes.byref(value), 0):
            err = ctypes.get_errno()
            raise OSError(err, f"registering an agent socket in {abi.OWN_SOCKS_MAP}")
        return sock

    def del_listener(self, slot: int) -> None:
        key = ctypes.c_uint32(slot)
        self._lib.bpf_delete_elem(self._listeners_fd, ctypes.byref(key))  # gone already is fine

    # ------------------------------------------------------------ sk_lookup links

    def attach_lookup(self, netns_fd: int) -> int:
        """Attach capture_lookup to a pod's namespace. The returned link fd keeps it there;
        closing it (or the agent exiting) detaches it."""
        attr = _LinkCreate(
            prog_fd=self.programs[abi.LOOKUP_PROGRAM].fd,
            target_fd=netns_fd,
            attach_type=BPF_SK_LOOKUP,
        )
        fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            raise DatapathError(
                f"attaching {abi.LOOKUP_PROGRAM} to a pod: {os.strerror(ctypes.get_errno())}"
            )
        return int(fd)

    def fd(self, name: str) -> int:
        return self.programs[name].fd

    def close(self) -> None:
        self._bpf.cleanup()
