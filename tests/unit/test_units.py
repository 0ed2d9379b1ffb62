"""The one parser of addresses, durations and sizes (agent/common/units.py), and its users."""

import datetime as dt

import pytest

from agent.common.errors import FieldError, UnitError
from agent.common.units import (
    parse_address,
    parse_duration,
    parse_port,
    parse_size,
    parse_timedelta,
)
from agent.hbone.protocol import BadRequest, parse_connect
from gateway.config import parse_config


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        # the agent's and the CA's flags wrote these (s m h d) ...
        ("30s", 30),
        ("15m", 900),
        ("24h", 86400),
        ("2d", 172800),
        ("90", 90),
        ("1.5h", 5400),
        # ... the gateway's file these (ms s m h, numbers): both sets are kept
        ("250ms", 0.25),
        (" 5 s ", 5),
        (0, 0),
        (2, 2.0),
        (0.5, 0.5),
    ],
)
def test_durations(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "is not a duration"),
        ("", "is not a duration"),
        ("-1s", "is not a duration"),
        ("1 mo", "is not a duration"),  # no months: `m` is minutes everywhere
        ("5us", "is not a duration"),
        ("1e3s", "is not a duration"),
        (-1, "must not be negative"),
        (float("nan"), "must not be negative"),
        (float("inf"), "too long"),
        ("99999999999d", "too long"),
        (True, "is not a duration"),
        (None, "is not a duration"),
        ([], "is not a duration"),
    ],
)
def test_bad_durations_say_why(value, reason):
    with pytest.raises(UnitError, match=reason):
        parse_duration(value)


def test_a_timedelta_holds_every_duration_the_parser_takes():
    assert parse_timedelta("7d") == dt.timedelta(days=7)
    longest = parse_timedelta(f"{int(dt.timedelta.max.total_seconds()) - 1}s")
    assert longest <= dt.timedelta.max


@pytest.mark.parametrize(
    ("value", "size"),
    [(512, 512), ("512", 512), ("64KiB", 65536), ("10MiB", 10 << 20), ("1GiB", 1 << 30),
     ("2KB", 2000), ("3MB", 3_000_000), ("1GB", 10**9), (" 7 B ", 7)],
)  # fmt: skip
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [("big", "is not a size"), ("1.5MiB", "is not a size"), ("1kib", "is not a size"),
     (-1, "must not be negative"), (1.0, "is not a size"), (True, "is not a size")],
)  # fmt: skip
def test_bad_sizes_say_why(value, reason):
    with pytest.raises(UnitError, match=reason):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "default_host", "address"),
    [
        ("127.0.0.1:15000", "0.0.0.0", ("127.0.0.1", 15000)),
        ("15021", "0.0.0.0", ("0.0.0.0", 15021)),
        (":8080", "127.0.0.1", ("127.0.0.1", 8080)),
        (8080, "0.0.0.0", ("0.0.0.0", 8080)),
        ("[::1]:9901", "127.0.0.1", ("::1", 9901)),
        ("ca.slipstream-system:15012", "127.0.0.1", ("ca.slipstream-system", 15012)),
    ],
)
def test_addresses(value, default_host, address):
    assert parse_address(value, default_host) == address


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1", "host:", "host:0", "host:65536", "host:http", "host:\u00b2", "host:" + "1" * 5000,
     "host:080080", None, True],
)  # fmt: skip
def test_bad_addresses_name_the_port(value):
    with pytest.raises(UnitError, match="is not an address"):
        parse_address(value, "0.0.0.0")


def test_ports_are_ascii_digits_within_range():
    assert parse_port("1") == 1 and parse_port("65535") == 65535
    for bad in ("0", "65536", "\uff18\uff10", "", "+1", " 1"):
        with pytest.raises(UnitError, match="is not a port"):
            parse_port(bad)


def test_a_listener_may_ask_for_any_free_port():
    assert parse_address("127.0.0.1:0", "0.0.0.0", listen=True) == ("127.0.0.1", 0)
    assert parse_port("0", listen=True) == 0
    with pytest.raises(UnitError, match=r"not a port \(0-65535\)"):
        parse_port("65536", listen=True)


# ---------------------------------------------------------------- its users say where


def test_the_gateway_config_takes_every_unit_of_the_one_parser():
    body = {
        "listeners": [{"name": "web", "address": 8080, "limits": {"headerTimeout": "1d"}}],
        "backends": [{"name": "b", "endpoints": ["http://127.0.0.1:9"], "connectTimeout": "250ms"}],
        "routes": [{"name": "r", "backendRefs": [{"name": "b"}]}],
    }
    config = parse_config(body)
    assert config.listeners[0].limits.header_timeout == 86400
    assert config.backends["b"].connect_timeout == 0.25
    body["routes"][0]["timeouts"] = {"request": "soon"}
    with pytest.raises(FieldError, match=r"routes\[0\].timeouts.request: 'soon' is not a duration"):
        parse_config(body)


def test_hbone_authorities_use_the_port_parser_and_stay_bad_requests():
    with pytest.raises(BadRequest, match="is not a port"):
        parse_connect([(":method", "CONNECT"), (":authority", "10.0.0.1:99999")])
