"""The router's latency histogram kept as plain counters, against prometheus_client's own Histogram as the oracle."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aicp.live.prometheus import LATENCY_BUCKETS, LatencyCounts


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_plain_counters_export_the_same_histogram_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = LatencyCounts()
    ours.register(counts)
    oracle = Histogram("aicp_task_latency_seconds", "oracle", labelnames=["outcome"], buckets=LATENCY_BUCKETS, registry=theirs)
    rng = random.Random(5)
    values = [*LATENCY_BUCKETS, 0.0, 61.0, 1e-9] + [rng.expovariate(1 / 0.01) for _ in range(2000)]  # bucket edges included
    for i, seconds in enumerate(values):
        outcome = "completed" if i % 3 else "failed"
        counts.observe(outcome, seconds)
        oracle.labels(outcome).observe(seconds)
    got, want = samples(generate_latest(ours)), samples(generate_latest(theirs))
    want = {k: v for k, v in want.items() if not k[0].endswith("_created")}
    assert set(got) == set(want)
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
    assert got[("aicp_task_latency_seconds_count", (("outcome", "completed"),))] == sum(1 for i in range(len(values)) if i % 3)
