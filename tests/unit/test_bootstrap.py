"""Joining the mesh from flags (agent/identity/bootstrap.py): the agent's and the gateway's way."""

import datetime as dt

import pytest

from agent.common.errors import SlipstreamError, UnitError
from agent.identity.bootstrap import CaAccess
from agent.identity.certs import (
    IdentityError,
    SpiffeId,
    ca_identity,
    cert_pem,
    generate_key,
    self_signed_root,
)
from gateway.errors import GatewayError
from gateway.mesh import MeshSettings

GATEWAY = "spiffe://cluster.local/ns/edge/sa/gateway"


@pytest.fixture
def files(tmp_path):
    key = generate_key()
    root = self_signed_root(key, "test root", dt.datetime.now(dt.UTC))
    (tmp_path / "roots.pem").write_text(cert_pem(root))
    (tmp_path / "token").write_text("secret-token\n")
    return tmp_path


def access(files, **changes):
    fields = {
        "ca": "127.0.0.1:15012",
        "ca_root": str(files / "roots.pem"),
        "ca_token_file": str(files / "token"),
        "trust_domain": "example.org",
    }
    return CaAccess(**{**fields, **changes})


def test_the_manager_talks_to_the_ca_as_the_ca_identity_of_the_trust_domain(files):
    certs = access(files).cert_manager(ttl=dt.timedelta(hours=1), wanted=set)
    assert certs.client.address == ("127.0.0.1", 15012)
    assert certs.client.ca_identity == ca_identity("example.org")
    assert certs.client.ca_identity == SpiffeId("example.org", "slipstream-system", "slipstream-ca")
    assert certs.bundle_pem == (files / "roots.pem").read_text()


@pytest.mark.parametrize(
    ("change", "error", "named"),
    [
        ({"ca_root": "missing.pem"}, SlipstreamError, r"cannot read /\S*/missing\.pem"),
        ({"ca_root": "token"}, IdentityError, r"/\S*/token: not PEM certificates"),
        ({"ca_token_file": "missing-token"}, SlipstreamError, r"cannot read /\S*/missing-token"),
        ({"ca_token_file": "empty"}, SlipstreamError, r"/\S*/empty is empty"),
        ({"ca": "ca.example:port"}, UnitError, r"'ca\.example:port' is not an address"),
    ],
)
def test_a_bad_flag_fails_at_start_naming_it(files, change, error, named):
    (files / "empty").write_text("\n")
    change = {k: (v if k == "ca" else str(files / v)) for k, v in change.items()}
    with pytest.raises(error, match=named):
        access(files, **change).check()
    with pytest.raises(error, match=named):
        access(files, **change).cert_manager(ttl=dt.timedelta(hours=1), wanted=set)


def test_the_gateway_checks_the_same_way_and_says_so_as_a_gateway_error(files):
    settings = MeshSettings(
        "127.0.0.1:15012", str(files / "roots.pem"), str(files / "token"), GATEWAY
    )
    settings.check()
    assert settings.ca_access == CaAccess(
        "127.0.0.1:15012", str(files / "roots.pem"), str(files / "token"), "cluster.local"
    )
    bad = MeshSettings("127.0.0.1:15012", str(files / "missing.pem"), str(files / "token"), GATEWAY)
    with pytest.raises(GatewayError, match=r"mesh: cannot read /\S*/missing\.pem"):
        bad.check()
    other_domain = MeshSettings(
        "127.0.0.1:15012", str(files / "roots.pem"), str(files / "token"), GATEWAY, "example.org"
    )
    with pytest.raises(GatewayError, match=r"not in trust domain example\.org"):
        other_domain.check()
