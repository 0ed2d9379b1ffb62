"""The one parser of each unit people write: addresses, durations and sizes.

Flags (`--admin 127.0.0.1:15000`, `--cert-ttl 24h`), the gateway's configuration
(`timeout: 500ms`, `maxBody: 1MiB`) and the lab's manifests (`certificateTTL: 1h`)
all read their values here, so a value means the same wherever it is written.
Errors are `UnitError`s whose message reads on its own and after a field's name
(`timeouts.request: 'soon' is not a duration (like 500ms, 30s, 15m, 24h or 7d)`).

Durations take `ms`, `s`, `m`, `h` and `d`, or a bare number of seconds. The two
parsers this replaced disagreed: the agent's and the CA's flags took `s m h d`, the
gateway's file `ms s m h`. Both sets are kept, so nothing that parsed before stops
parsing, and no unit letter changed meaning (`m` is minutes everywhere; months
and microseconds are not offered). Sizes take `B`, `KiB`, `MiB`, `GiB` (powers of
two) and `KB`, `MB`, `GB` (powers of ten), or a bare number of bytes.
"""

from __future__ import annotations

import datetime as dt
import math
import re

from .errors import UnitError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = dt.timedelta.max.total_seconds()
"""The longest duration: what a `timedelta` holds (about 2.7 million years)."""

_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*")
_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 10**3, "MB": 10**6}
_BYTES["GB"] = 10**9


def parse_duration(value: str | int | float) -> float:
    """Seconds, from `500ms`, `30s`, `15m`, `24h`, `7d`, or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnitError(f"{value!r} is not a duration (like 500ms, 30s, 15m, 24h or 7d)")
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise UnitError(f"{value!r} is not a duration (like 500ms, 30s, 15m, 24h or 7d)")
        seconds = float(m.group(1)) * _SECONDS[m.group(2) or "s"]
    else:
        seconds = float(value)
        if math.isnan(seconds) or seconds < 0:
            raise UnitError(f"{value!r} is not a duration: it must not be negative")
    if seconds > MAX_DURATION:
        raise UnitError(f"{value!r} is too long a duration")
    return seconds


def parse_timedelta(value: str | int | float) -> dt.timedelta:
    """`parse_duration`, as a timedelta (certificate lives, TTLs)."""
    return dt.timedelta(seconds=parse_duration(value))


def parse_size(value: str | int) -> int:
    """Bytes, from `512`, `64KiB`, `10MiB`, `1GiB` (or `KB`, `MB`, `GB`: powers of ten)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UnitError(f"{value!r} is not a size (like 64KiB or 10MiB)")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value} is not a size: it must not be negative")
        return value
    m = _SIZE.fullmatch(value)
    if m is None:
        raise UnitError(f"{value!r} is not a size (like 64KiB or 10MiB)")
    return int(m.group(1)) * _BYTES[m.group(2) or "B"]


def parse_port(text: str, *, listen: bool = False) -> int:
    """A TCP port, 1-65535, in ASCII digits (`str.isdigit` passes `²`, which `int` refuses).
    A port to `listen` on may also be 0: any free port, chosen by the kernel."""
    lowest = 0 if listen else 1
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not lowest <= int(text) <= 65535:
        raise UnitError(f"{text!r} is not a port ({lowest}-65535)")
    return int(text)


def parse_address(value: str | int, default_host: str, *, listen: bool = False) -> tuple[str, int]:
    """(host, port) from `HOST:PORT`, `:PORT` or `PORT` (then the host is `default_host`).

    The host is not resolved or checked here: a listener's bind or a connect says
    whether it exists. `[::1]:8080` gives `::1`. An address to `listen` on may have port 0.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UnitError(f"{value!r} is not an address (HOST:PORT or a port)")
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        number = parse_port(port, listen=listen)
    except UnitError as exc:
        raise UnitError(f"{text!r} is not an address (HOST:PORT or a port): no valid port") from exc
    return host.removeprefix("[").removesuffix("]") or default_host, number
