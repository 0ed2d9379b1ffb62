"""Reading a namespace's local addresses from its fib_trie, and picking the one namespace."""

import pytest

from agent.node import procscan

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.99.1.0/24 2 0 2
        +-- 10.99.1.0/29 2 0 2
           |-- 10.99.1.0
              /24 link UNICAST
           |-- 10.99.1.7
              /32 host LOCAL
        |-- 10.99.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/1 2 0 2
           |-- 10.99.1.7
              /32 host LOCAL
"""


def test_local_addresses_are_the_host_local_leaves():
    assert procscan.local_addresses(FIB_TRIE) == {"10.99.1.7", "127.0.0.1"}
    assert procscan.local_addresses("") == set()


def test_one_namespace_must_hold_the_address():
    spaces = {1: (100, {"10.0.0.1", "127.0.0.1"}), 2: (200, {"10.0.0.2", "127.0.0.1"})}
    assert procscan.pick("10.0.0.2", spaces) == 200
    assert procscan.pick("10.0.0.3", spaces) is None
    spaces[3] = (300, {"10.0.0.2"})
    with pytest.raises(procscan.ScanError, match="2 network namespaces on this node hold"):
        procscan.pick("10.0.0.2", spaces)


def test_attached_names_stay_file_names():
    assert procscan.attached_name("shop", "web") == "slipstream-found-shop.web"
    long = procscan.attached_name("shop", "w" * 253)
    assert long.startswith("slipstream-found-") and len(long) < 60


def test_scan_reads_this_machines_namespaces():
    """The real /proc: this process's namespace is left out as the agent's own would be."""
    import os

    own = os.stat("/proc/self/ns/net").st_ino
    assert own not in procscan.scan(own)
