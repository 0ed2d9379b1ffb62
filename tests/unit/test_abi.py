"""The ABI check: a mirror that differs from the compiled struct in any field is refused."""

import ctypes

import pytest

from agent.node.datapath import abi


class Compiled(ctypes.Structure):
    """Stands in for the type bcc builds from clang's layout of struct mesh_config."""

    _fields_ = list(abi.MeshConfig._fields_)


def make(fields):
    return type("Mirror", (ctypes.Structure,), {"_fields_": fields})


def test_identical_layouts_pass():
    abi.check_struct("mesh_config", Compiled, abi.MeshConfig)
    abi.check_struct("mesh_counters", make(list(abi.MeshCounters._fields_)), abi.MeshCounters)


def test_offset_difference_names_the_field():
    fields = list(abi.MeshConfig._fields_)
    fields.insert(2, ("extra", ctypes.c_uint32))  # shifts everything after it
    fields.remove(("reserved", ctypes.c_uint16))
    with pytest.raises(
        abi.AbiError, match=r"field 2 is 'outbound_port' in the program but 'extra'"
    ):
        abi.check_struct("mesh_config", Compiled, make(fields))


def test_offset_difference_with_same_names():
    fields = [("capture_mark", ctypes.c_uint32), ("agent_mark", ctypes.c_uint64)]
    compiled = make([("capture_mark", ctypes.c_uint32), ("agent_mark", ctypes.c_uint32)])
    with pytest.raises(
        abi.AbiError, match="field agent_mark is at offset 4 in the program, 8 in the mirror"
    ):
        abi.check_struct("m", compiled, make(fields))


def test_size_difference_names_the_field():
    fields = [(n, ctypes.c_uint32 if n == "hbone_port" else t) for n, t in abi.MeshConfig._fields_]
    with pytest.raises(
        abi.AbiError, match="field hbone_port is 2 bytes in the program, 4 in the mirror"
    ):
        abi.check_struct("mesh_config", Compiled, make(fields))


def test_missing_field_is_named():
    fields = list(abi.MeshConfig._fields_)[:-1]
    with pytest.raises(abi.AbiError, match="field lo_ifindex exists only in the program"):
        abi.check_struct("mesh_config", Compiled, make(fields))


def test_trailing_padding_difference():
    compiled = make([("a", ctypes.c_uint64), ("b", ctypes.c_uint32)])
    fields = [("a", ctypes.c_uint64), ("b", ctypes.c_uint32)]
    packed = type("Packed", (ctypes.Structure,), {"_pack_": 1, "_fields_": fields})
    with pytest.raises(abi.AbiError, match="struct is 16 bytes in the program, 12 in the mirror"):
        abi.check_struct("m", compiled, packed)
