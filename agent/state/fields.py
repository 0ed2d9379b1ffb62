"""Reading manifest fields: each reader checks a type or format and names the field it rejects.

Every parser of objects (Kubernetes kinds, mesh policies, the gateway's
configuration and its plugins) uses these, so an error always reads
`spec.ports[0].port: 70000 is not a port number (1-65535)`. Units (durations,
sizes, addresses) are read by agent/common/units.py, the one parser of each.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Set
from typing import Any

from agent.common import units
from agent.common.errors import FieldError, UnitError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def need(cond: bool, field: str, reason: str) -> None:
    if not cond:
        raise FieldError(field, reason)


def string(
    obj: Mapping[str, Any], key: str, path: str, *, required: bool = False, default: str = ""
) -> str:
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        need(not required, where, "is required")
        return default
    need(isinstance(value, str), where, f"must be a string, not {type(value).__name__}")
    return value


def mapping(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        return {}
    need(isinstance(value, dict), where, f"must be a mapping, not {type(value).__name__}")
    return value


def listing(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    need(isinstance(value, list), f"{path}.{key}", f"must be a list, not {type(value).__name__}")
    return value


def strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    entries = listing(obj, key, path)
    for i, item in enumerate(entries):
        need(
            isinstance(item, str),
            f"{path}.{key}[{i}]",
            f"must be a string, not {type(item).__name__}",
        )
    return tuple(entries)


def port_number(value: Any, where: str) -> int:
    need(isinstance(value, int) and not isinstance(value, bool), where, "must be a port number")
    need(1 <= value <= 65535, where, f"{value} is not a port number (1-65535)")
    return int(value)


def string_map(obj: Mapping[str, Any], key: str, path: str, *, labels: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in mapping(obj, key, path).items():
        where = f"{path}.{key}.{k}"
        need(
            isinstance(v, str), where, f"value must be a string (quote it), not {type(v).__name__}"
        )
        if labels:
            need(valid_label_key(str(k)), where, "is not a valid label key")
            need(
                bool(LABEL_VALUE.match(v)) and len(v) <= 63,
                where,
                f"{v!r} is not a valid label value",
            )
        out[str(k)] = v
    return out


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(LABEL_NAME.match(name))


def known_fields(obj: Mapping[Any, Any], allowed: Set[str], path: str) -> None:
    if all(k in allowed for k in obj):
        return
    # YAML keys need not be strings (`1: x`, `null: x`): they are unknown fields too, and
    # sorting must not compare them with strings.
    first = min(str(k) for k in obj if k not in allowed)
    where = f"{path}.{first}" if path else first
    raise FieldError(where, f"unknown field (known: {', '.join(sorted(allowed))})")


def match_labels(spec: Mapping[str, Any]) -> dict[str, str] | None:
    sel = mapping(spec, "selector", "spec")
    if not sel:
        return None
    known_fields(sel, {"matchLabels"}, "spec.selector")
    return string_map(sel, "matchLabels", "spec.selector", labels=True) or None


def ipv4(value: str, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise FieldError(where, f"{value!r} is not an IPv4 address") from exc


# ---------------------------------------------------------------- scalars with units


def duration(value: Any, where: str) -> float:
    """Seconds, from `250ms`, `5s`, `2m`, `1h`, `1d` or a plain number of seconds."""
    try:
        return units.parse_duration(value)
    except UnitError as exc:
        raise FieldError(where, str(exc)) from exc


def size(value: Any, where: str) -> int:
    """Bytes, from `512`, `64KiB`, `10MiB`, `1GiB` (or KB, MB, GB: powers of ten)."""
    try:
        return units.parse_size(value)
    except UnitError as exc:
        raise FieldError(where, str(exc)) from exc


def address(value: Any, where: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """(host, port) from `HOST:PORT` or a port."""
    try:
        return units.parse_address(value, default_host)
    except UnitError as exc:
        raise FieldError(where, str(exc)) from exc


def integer(value: Any, where: str, lo: int = 0, hi: int = 1 << 62) -> int:
    need(isinstance(value, int) and not isinstance(value, bool), where, "must be a whole number")
    need(lo <= value <= hi, where, f"{value} is out of range ({lo}-{hi})")
    return int(value)


def boolean(value: Any, where: str) -> bool:
    need(isinstance(value, bool), where, "must be true or false")
    return bool(value)


def opt(obj: Mapping[str, Any], key: str, path: str, read: Any, default: Any) -> Any:
    """`read(obj[key], path.key)` if the key is there, else `default`."""
    if obj.get(key) is None:
        return default
    return read(obj[key], f"{path}.{key}" if path else key)
