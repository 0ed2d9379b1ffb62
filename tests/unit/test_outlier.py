"""Outlier ejection: one rule (agent/common/outlier.py) for the agent's balancer and the gateway."""

import logging

import pytest

from agent.common.outlier import EjectionRule, Outlier
from agent.node.balancer import Balancer
from gateway.backends import Backend, PoolRegistry
from gateway.config import parse_config
from gateway.http import Pool


@pytest.mark.parametrize(
    ("rule", "steps"),
    [
        # Envoy's rule: base x the number of ejections, capped (not doubled: 30, 60, 120...)
        (EjectionRule(5, 30.0, 300.0), [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300]),
        (EjectionRule(3, 10.0, 25.0), [10, 20, 25, 25]),
        (EjectionRule(1, 0.5, 300.0), [0.5, 1.0, 1.5]),
    ],
)
def test_each_ejection_lasts_base_times_its_number_up_to_the_cap(rule, steps):
    outlier, now, seen = Outlier(), 1000.0, []
    for _ in steps:
        for _ in range(rule.consecutive_failures - 1):
            assert outlier.failed(rule, now) == 0.0, "not before the last failure of the run"
        seconds = outlier.failed(rule, now)
        seen.append(seconds)
        assert outlier.ejected(now) and outlier.ejected_until == now + seconds
        now += seconds  # the ejection ends
        assert not outlier.ejected(now)
    assert seen == steps


def test_failures_while_ejected_neither_count_nor_extend_it():
    rule, outlier = EjectionRule(2, 10.0), Outlier()
    outlier.failed(rule, 0.0)
    assert outlier.failed(rule, 0.0) == 10.0
    for _ in range(5):  # requests that were in flight come back failed
        assert outlier.failed(rule, 5.0) == 0.0
    assert outlier.ejected_until == 10.0
    assert outlier.failed(rule, 10.0) == 0.0, "a fresh run of failures is needed after it"
    assert outlier.failed(rule, 10.0) == 20.0


def test_a_success_resets_the_run():
    rule, outlier = EjectionRule(2, 10.0), Outlier()
    outlier.failed(rule, 0.0)
    outlier.succeeded()
    assert outlier.failed(rule, 0.0) == 0.0 and outlier.spotless is False
    outlier.succeeded()
    assert outlier.spotless


# ---------------------------------------------------------------- both users take the same steps


def test_the_agent_balancer_ejects_by_the_rule():
    lb = Balancer(consecutive_failures=2, base_ejection=10.0, max_ejection=35.0)
    addr, now, seen = ("10.244.1.2", 8080), 0.0, []
    for _ in range(4):
        assert not lb.failed(addr, now)
        assert lb.failed(addr, now)
        [status] = lb.status(now)
        seen.append(status["ejectedFor"])
        now += status["ejectedFor"]
    assert seen == [10.0, 20.0, 30.0, 35.0]  # doubling would give 10, 20, 35


def test_the_gateway_ejects_by_the_same_rule(caplog):
    spec = parse_config(
        {
            "listeners": [{"name": "web", "address": 8080}],
            "backends": [
                {
                    "name": "b",
                    "endpoints": ["http://127.0.0.1:9", "http://127.0.0.1:10"],
                    "healthCheck": {"passive": {"consecutiveFailures": 2, "ejection": "10s",
                                                "maxEjection": "35s"}},
                }
            ],
            "routes": [{"name": "r", "backendRefs": [{"name": "b"}]}],
        }
    ).backends["b"]  # fmt: skip
    backend = Backend(spec, PoolRegistry(lambda endpoint, spec: Pool(endpoint)))
    ep = backend.endpoints[0]
    caplog.set_level(logging.WARNING, logger="gateway.backends")
    for _ in range(4):
        backend.report(ep, ok=False)
        backend.report(ep, ok=False)
        ep.outlier.ejected_until = 0.0  # the ejection ends
    seen = [r.seconds for r in caplog.records if r.getMessage() == "endpoint ejected"]
    assert seen == [10.0, 20.0, 30.0, 35.0]  # doubling would give 10, 20, 35
    backend.report(ep, ok=False)
    backend.report(ep, ok=True)
    backend.report(ep, ok=False)
    assert ep.outlier.ejected_until == 0.0, "a success between failures breaks the run"
