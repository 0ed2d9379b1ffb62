"""Decoding `application/vnd.kubernetes.protobuf` request bodies into JSON objects.

kubectl's typed clients (`kubectl create namespace|configmap|secret|serviceaccount|
service|token|role...`) send protobuf, and no maintained Python library knows
Kubernetes' messages, so this is ours: a plain protobuf wire-format reader
(varints, length-delimited fields, fixed 32/64) driven by the field table that
scripts/gen_apiserver_proto.py extracts from Kubernetes' generated.proto
files, and the JSON forms of the special types (Time, MicroTime, IntOrString,
Quantity, FieldsV1, RawExtension, bytes as base64). Answers are JSON, which
these clients accept as well.

A body is `k8s\\x00` then a runtime.Unknown envelope naming apiVersion and kind.
Anything malformed raises a 400.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from typing import Any

from . import errors as E
from .proto_fields import MESSAGES

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAX_DEPTH = 64
PACKAGES = {
    "": "k8s.io.api.core.v1",
    "rbac.authorization.k8s.io": "k8s.io.api.rbac.v1",
    "authentication.k8s.io": "k8s.io.api.authentication.v1",
    "discovery.k8s.io": "k8s.io.api.discovery.v1",
}
META = "k8s.io.apimachinery.pkg.apis.meta.v1."


class _Bad(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Bad("truncated varint")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out = []
    pos = 0
    value: Any
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise _Bad("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Bad("truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _Bad("truncated length-delimited field")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Bad("truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise _Bad(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    return out


def _scalar(typ: str, wire: int, value: Any) -> Any:
    if typ == "string":
        if not isinstance(value, bytes):
            raise _Bad("a string field is not length-delimited")
        return value.decode("utf-8")
    if typ == "bytes":
        if not isinstance(value, bytes):
            raise _Bad("a bytes field is not length-delimited")
        return base64.b64encode(value).decode()
    if typ == "bool":
        return bool(value)
    if typ in ("int32", "int64"):
        if not isinstance(value, int):
            raise _Bad("an integer field is not a varint")
        return value - (1 << 64) if value >= 1 << 63 else value
    if typ in ("uint32", "uint64"):
        return int(value)
    if typ == "double":
        return struct.unpack("<d", value)[0]
    if typ == "float":
        return struct.unpack("<f", value)[0]
    raise _Bad(f"unsupported type {typ}")


def _time(msg: dict[str, Any], micro: bool) -> str | None:
    secs = int(msg.get("seconds", 0))
    nanos = int(msg.get("nanos", 0))
    try:
        t = dt.datetime.fromtimestamp(secs, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Bad("time out of range") from exc
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _message(name: str, buf: bytes, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _Bad("nested too deeply")
    table = MESSAGES.get(name)
    if table is None:
        raise _Bad(f"unknown message {name}")
    out: dict[str, Any] = {}
    for num, wire, value in _fields(buf):
        spec = table.get(num)
        if spec is None:
            continue  # an unknown field, as protobuf readers skip them
        fname, label = spec[0], spec[1]
        if label == "map":
            if not isinstance(value, bytes):
                raise _Bad(f"{fname}: a map entry is not length-delimited")
            k = v = None
            for n2, w2, v2 in _fields(value):
                if n2 == 1:
                    k = _value(spec[2], w2, v2, depth)
                elif n2 == 2:
                    v = _value(spec[3], w2, v2, depth)
            out.setdefault(fname, {})[k if k is not None else ""] = (
                v if v is not None else ("" if spec[3] in ("string", "bytes") else None)
            )
            continue
        item = _value(spec[2], wire, value, depth)
        if label != "repeated" and item in ("", 0, False) and not isinstance(item, float):
            continue  # gogo writes zero values; JSON's omitempty leaves them out
        if label == "repeated":
            out.setdefault(fname, []).append(item)
        else:
            out[fname] = item
    return _special(name, out)


def _value(typ: str, wire: int, value: Any, depth: int) -> Any:
    if typ in MESSAGES:
        if not isinstance(value, bytes):
            raise _Bad(f"a {typ} is not length-delimited")
        return _message(typ, value, depth + 1)
    return _scalar(typ, wire, value)


def _special(name: str, msg: dict[str, Any]) -> Any:
    if name == META + "Time":
        return _time(msg, False)
    if name == META + "MicroTime":
        return _time(msg, True)
    if name == "k8s.io.apimachinery.pkg.util.intstr.IntOrString":
        return msg.get("strVal", "") if msg.get("type") == 1 else msg.get("intVal", 0)
    if name == "k8s.io.apimachinery.pkg.api.resource.Quantity":
        return msg.get("string", "")
    if name in (META + "FieldsV1", "k8s.io.apimachinery.pkg.runtime.RawExtension"):
        raw = msg.get("Raw", msg.get("raw"))
        if raw is None:
            return {}
        try:
            return json.loads(base64.b64decode(raw))
        except ValueError as exc:
            raise _Bad("embedded JSON is not JSON") from exc
    if name == META + "Duration":
        return f"{int(msg.get('duration', 0)) / 1e9:g}s"
    return msg


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for; 400 when malformed."""
    if not body.startswith(MAGIC):
        raise E.bad_request("protobuf body does not start with the Kubernetes magic number")
    try:
        envelope = _message("k8s.io.apimachinery.pkg.runtime.Unknown", body[len(MAGIC) :], 0)
        type_meta = envelope.get("typeMeta") or {}
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        group, _, _version = api_version.rpartition("/")
        package = META[:-1] if kind in ("DeleteOptions", "CreateOptions") else PACKAGES.get(group)
        if package is None or f"{package}.{kind}" not in MESSAGES:
            raise E.unsupported_media(["application/json", "application/yaml"])
        raw = base64.b64decode(envelope.get("raw", ""))
        obj = _message(f"{package}.{kind}", raw, 0)
    except _Bad as exc:
        raise E.bad_request(f"protobuf body cannot be decoded: {exc}") from exc
    except (UnicodeDecodeError, ValueError, struct.error) as exc:
        raise E.bad_request(f"protobuf body cannot be decoded: {exc}") from exc
    if not isinstance(obj, dict):
        raise E.bad_request("protobuf body is not an object")
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
