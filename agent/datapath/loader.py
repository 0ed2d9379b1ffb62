"""Compiling and loading the capture programs: the only module that imports bcc.

The programs are compiled once per agent start from bpf/*.c, the mirror in
abi.py is checked against the compiled map types, and mesh_config is filled.
Attaching them to pods is pod.py's job; the fds stay valid while `Programs` lives.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any

from . import abi

log = logging.getLogger("agent.datapath")

REPO_BPF_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf"
)


def bpf_dir() -> str:
    """bpf/ of this checkout; SLIPSTREAM_BPF_DIR points elsewhere (tests use it)."""
    return os.environ.get("SLIPSTREAM_BPF_DIR", REPO_BPF_DIR)


class DatapathError(abi.SlipstreamError):
    """The eBPF programs could not be compiled, checked or loaded."""


@dataclass
class Program:
    name: str
    fd: int


class Programs:
    """The loaded capture programs and their maps."""

    def __init__(self, directory: str | None = None) -> None:
        directory = directory or bpf_dir()
        try:
            from bcc import BPF  # the one import of bcc in Slipstream
        except ImportError as exc:
            raise DatapathError(
                "bcc is not importable: install python3-bpfcc (make setup does)"
            ) from exc
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
                fn = self._bpf.load_func(name.encode(), BPF.SCHED_CLS)
            except Exception as exc:
                raise DatapathError(f"the kernel refused program {name}: {exc}") from exc
            self.programs[name] = Program(name, fn.fd)
        self.write_config(abi.default_config())
        log.info("capture programs loaded", extra={"programs": ",".join(self.programs)})

    def check_abi(self) -> None:
        for map_name, mirror in abi.MIRRORS.items():
            try:
                table = self._bpf[map_name.encode()]
            except KeyError:
                raise abi.AbiError(
                    f"map {map_name} is missing from the compiled programs"
                ) from None
            # Per-CPU maps expose one value per CPU as Leaf; sLeaf is the element.
            abi.check_struct(map_name, getattr(table, "sLeaf", table.Leaf), mirror)

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

    def fd(self, name: str) -> int:
        return self.programs[name].fd

    def close(self) -> None:
        self._bpf.cleanup()
