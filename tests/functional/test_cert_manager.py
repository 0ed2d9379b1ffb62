"""The agent's certificate manager against a real CA: first issue, half-life renewal, CA outages."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from agent.identity.certs import SpiffeId
from agent.identity.manager import CertManager, NoCertificate
from tests.functional.cakit import TD, start_ca

WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")
DB_ON_N1 = SpiffeId(TD, "shop", "web2")


@pytest.fixture
def ca(tmp_path):
    running = start_ca(tmp_path)
    yield running
    running.stop()


async def running_manager(ca, ttl_s: float, wanted: set[SpiffeId]):
    mgr = CertManager(
        ca.client("n1"),
        ca.bundle(),
        ttl=dt.timedelta(seconds=ttl_s),
        wanted=lambda: wanted,
        bundle_refresh=0.5,
    )
    drain = asyncio.Event()
    task = asyncio.create_task(mgr.run(drain))
    return mgr, drain, task


async def test_first_certificate_then_renewal_at_half_life(ca):
    mgr, drain, task = await running_manager(ca, 4, {WEB})
    try:
        first = await mgr.get(WEB, timeout=20)
        life = first.not_after - first.cert.not_valid_before_utc.timestamp()
        assert first.renew_at == pytest.approx(first.not_after - life / 2)
        # Renewed at half-life with a new key, long before it expires.
        deadline = time.time() + 10
        while mgr.current(WEB) is first and time.time() < deadline:
            await asyncio.sleep(0.05)
        second = mgr.current(WEB)
        assert second is not first and second.cert.serial_number != first.cert.serial_number
        assert second.key.public_key().public_numbers() != first.key.public_key().public_numbers()
        assert time.time() < first.not_after, "renewed before the old certificate expired"
    finally:
        drain.set()
        await task


async def test_an_identity_the_node_may_not_have_stays_pending_with_the_reason(ca):
    mgr, drain, task = await running_manager(ca, 60, {DB})
    try:
        # Waited for: the CA's refusal (a short get() could end before the CA answered).
        deadline = time.monotonic() + 20
        while "403" not in (next(iter(mgr.status()), {}).get("lastError") or ""):
            assert time.monotonic() < deadline, mgr.status()
            await asyncio.sleep(0.05)
        with pytest.raises(NoCertificate, match="node n1 runs no pod with service account db"):
            await mgr.get(DB, timeout=0.1)
        (status,) = mgr.status()
        assert status["state"] == "pending" and "403" in status["lastError"]
    finally:
        drain.set()
        await task


async def test_the_valid_certificate_stays_in_use_while_the_ca_is_down(ca, tmp_path):
    mgr, drain, task = await running_manager(ca, 12, {WEB})
    try:
        first = await mgr.get(WEB, timeout=20)
        ca.stop()
        # Waited for: the renewal at half-life was tried and failed (not a sleep past it).
        deadline = time.monotonic() + 30
        while time.time() < first.renew_at + 0.5 or "cannot reach the CA" not in (
            mgr.status()[0]["lastError"] or ""
        ):
            assert time.monotonic() < deadline, mgr.status()
            await asyncio.sleep(0.05)
        assert time.time() < first.not_after, "this machine stalled past the certificate's life"
        assert mgr.current(WEB) is first, "kept while valid"
        (status,) = mgr.status()
        assert status["state"] == "valid" and "cannot reach the CA" in status["lastError"]
        restarted = start_ca(tmp_path, port=ca.port)
        try:
            deadline = time.time() + 30
            while mgr.current(WEB) is first and time.time() < deadline:
                await asyncio.sleep(0.1)
            assert mgr.current(WEB) is not first, (
                "renewed once the CA was back (retried with backoff)"
            )
        finally:
            restarted.stop()
    finally:
        drain.set()
        await task


async def test_an_identity_wanted_during_a_fetch_is_fetched_at_once(ca):
    """A wake-up that arrives while a certificate is being fetched must not be lost."""
    wanted = {WEB}
    client = ca.client("n1")
    real_sign = client.sign

    async def sign(identity, csr, ttl, bundle):
        if identity == WEB:
            wanted.add(DB_ON_N1)
            mgr.wake()  # as the store would, mid-fetch
        return await real_sign(identity, csr, ttl, bundle)

    client.sign = sign
    mgr = CertManager(
        client,
        ca.bundle(),
        ttl=dt.timedelta(hours=1),
        wanted=lambda: set(wanted),
        bundle_refresh=30,
    )
    drain = asyncio.Event()
    task = asyncio.create_task(mgr.run(drain))
    try:
        await mgr.get(WEB, timeout=20)
        start = time.monotonic()
        while mgr.current(DB_ON_N1) is None and time.monotonic() - start < 5:
            await asyncio.sleep(0.02)
        assert mgr.current(DB_ON_N1) is not None, (
            "fetched at once, not at the next 30 s bundle refresh"
        )
    finally:
        drain.set()
        await task
