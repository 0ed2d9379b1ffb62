"""The CA's credentials, against the real CA process over real TLS: a workload credential gets
only its own identity, the issuance log needs a credential and shows only what it may, each
credential has its own issuance limit, and credentials expire, rotate and are revoked."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time

import pytest

from agent.ca import credentials
from agent.ca.credentials import NODE, WORKLOAD
from agent.identity.caclient import CARefused, TokenFile
from agent.identity.certs import SpiffeId, generate_key, load_certs, make_csr, spiffe_ids_of
from agent.identity.manager import CertManager
from tests.functional.cakit import TD, start_ca
from tests.lab.labkit import wait_until

WEB = SpiffeId(TD, "shop", "web")
WEB2 = SpiffeId(TD, "shop", "web2")
DB = SpiffeId(TD, "shop", "db")


@pytest.fixture
def ca(tmp_path):
    running = start_ca(tmp_path)
    yield running
    running.stop()


def sign(ca, token, identity, ttl=600):
    """`token`: a token, a node's name ("n1"), or something that returns the token."""
    if isinstance(token, str) and len(token) < 16:
        token = ca.token(token)
    client = ca.client(token if callable(token) else (lambda: token))
    return asyncio.run(client.sign(identity, make_csr(generate_key(), identity), ttl, ca.bundle()))


def refused(ca, token, identity) -> CARefused:
    with pytest.raises(CARefused) as exc:
        sign(ca, token, identity)
    return exc.value


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "ca", "token", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_workload_credential_gets_its_own_identity_and_nothing_else(ca):
    rec, token = ca.mint(WORKLOAD, "web", namespace="shop", service_account="web")
    (cert,) = load_certs(sign(ca, token, WEB)[0])
    assert spiffe_ids_of(cert) == [str(WEB)]
    for other in (WEB2, DB, SpiffeId(TD, "edge", "web")):
        exc = refused(ca, token, other)
        assert exc.status == 403
        assert f"credential {rec.id} is service account shop/web's" in exc.reason
        assert f"not {other}" in exc.reason
    # web2 runs on the same node as web: only a node credential may have it signed
    sign(ca, "n1", WEB2)
    log = [e for e in ca.log() if e["msg"] == "certificate refused"]
    assert {e["credential"] for e in log} == {rec.id}
    assert all(e["kind"] == WORKLOAD and e["status"] == 403 for e in log)


def test_a_workload_credential_needs_a_running_pod_of_its_own(ca):
    _, ghost = ca.mint(WORKLOAD, "ghost", namespace="shop", service_account="ghost")
    exc = refused(ca, ghost, SpiffeId(TD, "shop", "ghost"))
    assert exc.status == 403 and "no pod with service account ghost runs" in exc.reason
    _, bound = ca.mint(WORKLOAD, "bound", namespace="shop", service_account="web", pod="web")
    sign(ca, bound, WEB)
    _, stale = ca.mint(WORKLOAD, "stale", namespace="shop", service_account="web", pod="web-old")
    exc = refused(ca, stale, WEB)
    assert exc.status == 403 and "bound to pod shop/web-old, which does not run" in exc.reason


def test_the_issuance_log_needs_a_credential_and_shows_only_what_it_may(ca):
    wl, wl_token = ca.mint(WORKLOAD, "web", namespace="shop", service_account="web")
    sign(ca, "n1", WEB)
    sign(ca, "n2", DB)
    sign(ca, wl_token, WEB)
    answer = ca.request("GET", "/v1/issued")
    assert answer.status == 401 and "no credential" in answer.error
    assert ca.request("GET", "/v1/issued", "x" * 43).status == 401

    def seen(token):
        answer = ca.request("GET", "/v1/issued", token)
        assert answer.status == 200
        return {(r["credential"], r["identity"]) for r in answer.json}

    n1 = credentials.load_records(ca.credentials)[0]
    assert seen(ca.token("n1")) == {(n1.id, str(WEB))}
    assert seen(wl_token) == {(wl.id, str(WEB))}
    assert len(seen(ca.admin())) == 3
    # an admin credential reads; it has nothing signed
    exc = refused(ca, ca.admin(), WEB)
    assert exc.status == 403 and "has nothing signed" in exc.reason


# Four CLI processes: ~8 s each to start on a loaded two-core machine, past the 60 s default.
@pytest.mark.timeout(180)
def test_an_expired_credential_is_refused_with_the_reason(ca):
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    rec = credentials.mint(
        ca.credentials, NODE, str(ca.dir / "old.token"), ttl=dt.timedelta(days=1),
        node="n1", now=long_ago,
    )  # fmt: skip
    exc = refused(ca, ca.token("old"), WEB)
    assert exc.status == 401 and f"credential {rec.id} (node n1) expired at" in exc.reason
    # minted with --ttl, a credential carries its expiry
    res = cli("node", "n1", "--ttl", "2h", "--credentials", ca.credentials,
              "--out", str(ca.dir / "fresh.token"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    fresh = next(r for r in credentials.load_records(ca.credentials) if r.id in res.stdout)
    assert fresh.expires is not None
    assert dt.timedelta(minutes=119) < fresh.expires - fresh.created <= dt.timedelta(hours=2)
    sign(ca, ca.token("fresh"), WEB)
    for bad in ("0s", "-1h", "soon"):
        res = cli("node", "n1", "--ttl", bad, "--credentials", ca.credentials,
                  "--out", str(ca.dir / "x.token"))  # fmt: skip
        assert res.returncode != 0 and ("--ttl" in res.stderr or "not a duration" in res.stderr)


def test_a_revoked_credential_is_refused_at_once(ca):
    rec, token = ca.mint(WORKLOAD, "web", namespace="shop", service_account="web")
    sign(ca, token, WEB)
    res = cli("revoke", rec.id, "--credentials", ca.credentials)
    assert res.returncode == 0 and f"revoked {rec.id}" in res.stdout, res.stderr
    exc = refused(ca, token, WEB)
    assert exc.status == 401 and f"credential {rec.id} (workload shop/web) was revoked" in (
        exc.reason
    )
    listing = cli("list", "--credentials", ca.credentials).stdout
    assert any(line.startswith(rec.id) and "revoked" in line for line in listing.splitlines())


def test_a_node_credential_rotates_without_downtime(ca):
    """The holder re-reads its token file: a new credential written there is used from the next
    request on, and the old one can be revoked while certificates keep being renewed."""
    token_file = TokenFile(str(ca.dir / "n1.token"))
    old = credentials.load_records(ca.credentials)[0]
    old_token = ca.token("n1")

    async def scenario() -> list[str]:
        manager = CertManager(
            ca.client(token_file), ca.bundle(), ttl=dt.timedelta(seconds=2), wanted=lambda: {WEB}
        )
        drain = asyncio.Event()
        task = asyncio.create_task(manager.run(drain))
        serials = []
        try:
            first = await manager.get(WEB)
            serials.append(format(first.cert.serial_number, "x"))
            res = await asyncio.to_thread(
                cli, "node", "n1", "--ttl", "1h", "--credentials", ca.credentials,
                "--out", str(ca.dir / "n1.token"),
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            res = await asyncio.to_thread(cli, "revoke", old.id, "--credentials", ca.credentials)
            assert res.returncode == 0, res.stderr
            revoked_at = time.time()
            deadline = time.monotonic() + 20
            while True:  # renewed (at half of 2 s) after the old credential was revoked
                current = manager.current(WEB)
                if current and current.cert.not_valid_before_utc.timestamp() + 60 > revoked_at:
                    break
                assert time.monotonic() < deadline, manager.status()
                await asyncio.sleep(0.05)
            serials.append(format(current.cert.serial_number, "x"))
            assert manager.current(WEB) is not None  # never without a valid certificate
        finally:
            drain.set()
            await task
        return serials

    serials = asyncio.run(scenario())
    assert serials[0] != serials[1]
    issued = ca.request("GET", "/v1/issued", ca.admin()).json
    new_id = next(
        r.id for r in credentials.load_records(ca.credentials) if r.node == "n1" and r.id != old.id
    )
    by = {r["serial"]: r["credential"] for r in issued}
    assert by[serials[0]] == old.id and by[serials[1]] == new_id
    exc = refused(ca, old_token, WEB)
    assert exc.status == 401 and "revoked" in exc.reason


def test_a_broken_credentials_file_keeps_the_last_good_one(ca):
    sign(ca, "n1", WEB)
    (ca.dir / "credentials.json").write_text('{"credentials": [{"kind": "root"}]}')
    sign(ca, "n1", WEB)
    wait_until(
        lambda: [e for e in ca.log() if e["msg"].startswith("credentials file changed")],
        15,
        "the CA to report the broken file",
    )
    problem = next(e for e in ca.log() if e["msg"].startswith("credentials file changed"))
    assert "credentials[0].kind: 'root' is not one of node, workload, admin" in problem["error"]


def test_each_credential_has_its_own_issuance_limit(tmp_path):
    ca = start_ca(tmp_path, extra=("--issue-burst", "3", "--issue-rate", "0.01"))
    try:
        for _ in range(3):
            sign(ca, "n1", WEB)
        exc = refused(ca, "n1", WEB)
        assert exc.status == 429 and "faster than 0.01/s (burst 3)" in exc.reason
        assert exc.retry_after >= 1
        raw = ca.request("POST", "/v1/certificates", ca.token("n1"), b"{}")
        assert raw.status == 429 and int(raw.headers["retry-after"]) >= 1
        sign(ca, "n2", DB)  # another credential is served
        n1 = credentials.load_records(ca.credentials)[0]
        assert f'slipstream_ca_rate_limited_total{{credential="{n1.id}"}} 2.0' in ca.metrics()
        issued = ca.metrics()
        assert 'slipstream_ca_certificates_issued_total{kind="node"} 4.0' in issued
    finally:
        ca.stop()


def test_the_token_cli_names_what_is_wrong(ca):
    res = cli("workload", "just-a-name", "--credentials", ca.credentials, "--out", "/dev/null")
    assert res.returncode != 0 and "expected NAMESPACE/SERVICEACCOUNT" in res.stderr
    res = cli("node", "Node_1", "--credentials", ca.credentials, "--out", str(ca.dir / "x"))
    assert res.returncode != 0 and "node: 'Node_1' is not a valid name" in res.stderr
    res = cli("revoke", "nope", "--credentials", ca.credentials)
    assert res.returncode != 0 and "no credential nope" in res.stderr
