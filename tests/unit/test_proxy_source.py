"""The client address an HBONE destination believes: what the connection proves, never the
peer's Forwarded word (agent/node/proxy/source.py).
Lab attacks: tests/lab/test_source_address.py."""

import pytest

from agent.hbone.protocol import parse_connect
from agent.node.proxy.source import ClientSource, hbone_source

PEER = ("10.244.1.2", 51000)
"""The TCP peer of the HBONE connection: the source pod's own address."""
DEST = "10.244.2.2"


def request(*forwarded: str):
    headers = [(":method", "CONNECT"), (":authority", f"{DEST}:8080")]
    return parse_connect(headers + [("forwarded", f) for f in forwarded])


def test_a_claim_of_the_connections_own_address_gives_the_apps_port():
    assert hbone_source(PEER, request('for="10.244.1.2:41000"')) == ClientSource(
        ("10.244.1.2", 41000)
    )


def test_no_forwarded_is_the_connections_address():
    assert hbone_source(PEER, request()) == ClientSource(PEER)


@pytest.mark.parametrize(
    ("forwarded", "why"),
    [
        ('for="127.0.0.1:80"', "not the connection's address 10.244.1.2"),
        ('for="127.0.0.53:53"', "not the connection's address"),
        ('for="169.254.169.254:80"', "not the connection's address"),  # link-local, metadata
        ('for="10.244.1.3:80"', "not the connection's address"),  # another pod
        (f'for="{DEST}:8080"', "not the connection's address"),  # the destination itself
        ('for="10.244.2.1:80"', "not the connection's address"),  # the node (pod gateway)
        ('for="0.0.0.0:80"', "not the connection's address"),
        ('for="255.255.255.255:80"', "not the connection's address"),
        ('for="[::1]:80"', "not one IPv4 ip:port"),
        ('for="[::ffff:10.244.1.3]:80"', "not one IPv4 ip:port"),
        ("for=unknown", "not one IPv4 ip:port"),
        ('for="_gateway"', "not one IPv4 ip:port"),
        ("for=10.244.1.3", "not one IPv4 ip:port"),
        ("for=10.244.1.2:\u00b2", "not one IPv4 ip:port"),
        ('for="10.244.1.2:1", for="127.0.0.1:80"', "not one IPv4 ip:port"),
        ("by=10.244.1.3", "not one IPv4 ip:port"),
        ("x" * 10000, "not one IPv4 ip:port"),
    ],
)
def test_any_other_claim_is_ignored_and_named(forwarded, why):
    source = hbone_source(PEER, request(forwarded))
    assert source.addr == PEER
    assert source.ignored is not None and why in source.ignored
    assert len(source.ignored) < 300, "the record keeps a bounded piece of the claim"


def test_a_second_forwarded_field_cannot_smuggle_another_address():
    source = hbone_source(PEER, request('for="10.244.1.2:41000"', 'for="127.0.0.1:80"'))
    assert source.addr == PEER and "ignored" in (source.ignored or "")
