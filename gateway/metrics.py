"""Request metrics: cheap counters in each worker, summed and rendered for Prometheus by the master.

A worker counts in plain dicts (a request costs a few dict updates, not a
lock per metric); the master asks every worker for a snapshot when /metrics
is scraped, adds them up and renders the exposition format with
prometheus-client's metric families.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration: dict[str, Histogram] = {}
        self.upstream: dict[str, Histogram] = {}
        self.ratelimit: dict[tuple[str, str], int] = {}
        self.cache: dict[tuple[str, str], int] = {}

    def request(self, route: str, status: int, consumer: str, seconds: float) -> None:
        key = (route, f"{status // 100}xx", consumer)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.duration.get(route)
        if h is None:
            h = self.duration[route] = Histogram()
        h.observe(seconds)

    def upstream_time(self, route: str, seconds: float) -> None:
        h = self.upstream.get(route)
        if h is None:
            h = self.upstream[route] = Histogram()
        h.observe(seconds)

    def count(self, table: dict[tuple[str, str], int], route: str, outcome: str) -> None:
        key = (route, outcome)
        table[key] = table.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "duration": {r: [h.counts, h.sum, h.count] for r, h in self.duration.items()},
            "upstream": {r: [h.counts, h.sum, h.count] for r, h in self.upstream.items()},
            "ratelimit": [[*k, v] for k, v in self.ratelimit.items()],
            "cache": [[*k, v] for k, v in self.cache.items()],
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> Metrics:
    total = Metrics()
    for snap in snapshots:
        for route, cls, consumer, n in snap["requests"]:
            key = (route, cls, consumer)
            total.requests[key] = total.requests.get(key, 0) + n
        for name in ("duration", "upstream"):
            table: dict[str, Histogram] = getattr(total, name)
            for route, (counts, s, c) in snap[name].items():
                h = table.setdefault(route, Histogram())
                h.counts = [a + b for a, b in zip(h.counts, counts, strict=True)]
                h.sum += s
                h.count += c
        for name in ("ratelimit", "cache"):
            t: dict[tuple[str, str], int] = getattr(total, name)
            for route, outcome, n in snap[name]:
                t[(route, outcome)] = t.get((route, outcome), 0) + n
    return total


class _Families(Collector):
    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Any]:
        m = self.m
        req = CounterMetricFamily(
            "slipstream_gateway_requests",
            "Requests answered, by route, status class and consumer",
            labels=["route", "code", "consumer"],
        )
        for (route, cls, consumer), n in sorted(m.requests.items()):
            req.add_metric([route, cls, consumer], n)
        yield req
        for name, table, doc in (
            ("slipstream_gateway_request_duration_seconds", m.duration, "Time in the gateway"),
            (
                "slipstream_gateway_upstream_duration_seconds",
                m.upstream,
                "Time to the upstream's response head",
            ),
        ):
            fam = HistogramMetricFamily(name, doc, labels=["route"])
            for route, h in sorted(table.items()):
                cumulative, buckets = 0, []
                for bound, c in zip([*BUCKETS, float("inf")], h.counts, strict=True):
                    cumulative += c
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                fam.add_metric([route], buckets, h.sum)
            yield fam
        for name, table2, doc in (
            ("slipstream_gateway_ratelimit", m.ratelimit, "Rate-limit decisions by outcome"),
            ("slipstream_gateway_cache", m.cache, "Cache lookups by X-Cache-Status"),
        ):
            fam2 = CounterMetricFamily(name, doc, labels=["route", "outcome"])
            for (route, outcome), n in sorted(table2.items()):
                fam2.add_metric([route, outcome], n)
            yield fam2


def render(m: Metrics) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(m))
    return generate_latest(registry)
