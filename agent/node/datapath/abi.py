"""The one Python mirror of bpf/mesh.h, and the check that it matches the compiled programs.

Field names, order and C types here must follow the header exactly. At load,
`check_struct` compares each mirror with the type clang laid out for the map
(bcc exposes it as a ctypes class) and names the first field that differs.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from agent.common.constants import HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT
from agent.common.errors import SlipstreamError

CONFIG_MAP = "mesh_config"
COUNTERS_MAP = "mesh_counters"
PODS_MAP = "mesh_pods"
CAPTURED_MAP = "mesh_captured"
LISTENERS_MAP = "mesh_listeners"
OWN_SOCKS_MAP = "mesh_own_socks"
TC_PROGRAMS = ("capture_egress", "capture_lo_ingress", "capture_ingress")
LOOKUP_PROGRAM = "capture_lookup"
PROGRAMS = (*TC_PROGRAMS, LOOKUP_PROGRAM)
LISTENER_SLOTS = 2048
"""Size of mesh_listeners: two slots (outbound, inbound) per enrolled pod."""

# Values the programs read from mesh_config: the marks are defined here only, the ports in
# agent/common/constants.py (the relay and HBONE use them too).
AGENT_MARK = 0x539
CAPTURE_MARK = 0x53A
LO_IFINDEX = 1
ROUTE_TABLE = 100
RULE_PRIORITY = 100


class MeshConfig(ctypes.Structure):
    _fields_ = [
        ("capture_mark", ctypes.c_uint32),
        ("agent_mark", ctypes.c_uint32),
        ("outbound_port", ctypes.c_uint16),
        ("inbound_port", ctypes.c_uint16),
        ("hbone_port", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
        ("lo_ifindex", ctypes.c_uint32),
    ]


class MeshCounters(ctypes.Structure):
    _fields_ = [
        ("outbound_new", ctypes.c_uint64),
        ("outbound_packets", ctypes.c_uint64),
        ("inbound_new", ctypes.c_uint64),
        ("no_listener", ctypes.c_uint64),
        ("assigned", ctypes.c_uint64),
        ("drop_fragment", ctypes.c_uint64),
        ("drop_malformed", ctypes.c_uint64),
        ("drop_vlan", ctypes.c_uint64),
        ("drop_ipv6", ctypes.c_uint64),
        ("forged_mark", ctypes.c_uint64),
    ]


class MeshPod(ctypes.Structure):
    _fields_ = [
        ("outbound_slot", ctypes.c_uint32),
        ("inbound_slot", ctypes.c_uint32),
    ]


class MeshTuple(ctypes.Structure):
    """Addresses and ports in network byte order, as on the wire."""

    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
    ]


# (map, "key" or "leaf") -> mirror; maps bcc cannot describe (the sockmap) are not listed.
MIRRORS: dict[tuple[str, str], type[ctypes.Structure]] = {
    (CONFIG_MAP, "leaf"): MeshConfig,
    (COUNTERS_MAP, "leaf"): MeshCounters,
    (PODS_MAP, "leaf"): MeshPod,
    (CAPTURED_MAP, "key"): MeshTuple,
}


class AbiError(SlipstreamError):
    """The Python mirror and the compiled programs disagree; the agent must not run."""


@dataclass(frozen=True)
class FieldLayout:
    name: str
    offset: int
    size: int


def layout(struct: type[ctypes.Structure]) -> list[FieldLayout]:
    out = []
    for f in struct._fields_:
        name = f[0]
        desc = getattr(struct, name)
        out.append(FieldLayout(name, desc.offset, desc.size))
    return out


def check_struct(
    map_name: str, compiled: type[ctypes.Structure], mirror: type[ctypes.Structure]
) -> None:
    """Raise AbiError naming the first field whose name, offset or size differs."""
    where = f"map {map_name} (bpf/mesh.h vs agent/node/datapath/abi.py {mirror.__name__})"
    theirs, ours = layout(compiled), layout(mirror)
    for i, (c, m) in enumerate(zip(theirs, ours, strict=False)):
        if c.name != m.name:
            raise AbiError(
                f"{where}: field {i} is {c.name!r} in the program but {m.name!r} in the mirror"
            )
        if c.offset != m.offset:
            raise AbiError(
                f"{where}: field {c.name} is at offset {c.offset} in the program, "
                f"{m.offset} in the mirror"
            )
        if c.size != m.size:
            raise AbiError(
                f"{where}: field {c.name} is {c.size} bytes in the program, {m.size} in the mirror"
            )
    if len(theirs) != len(ours):
        longer, side = (theirs, "program") if len(theirs) > len(ours) else (ours, "mirror")
        extra = longer[min(len(theirs), len(ours))].name
        raise AbiError(f"{where}: field {extra} exists only in the {side}")
    if ctypes.sizeof(compiled) != ctypes.sizeof(mirror):
        raise AbiError(
            f"{where}: struct is {ctypes.sizeof(compiled)} bytes in the program, "
            f"{ctypes.sizeof(mirror)} in the mirror"
        )


def default_config() -> MeshConfig:
    return MeshConfig(
        capture_mark=CAPTURE_MARK,
        agent_mark=AGENT_MARK,
        outbound_port=OUTBOUND_PORT,
        inbound_port=INBOUND_PORT,
        hbone_port=HBONE_PORT,
        reserved=0,
        lo_ifindex=LO_IFINDEX,
    )
