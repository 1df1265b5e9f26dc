"""Prometheus metrics for a live router, in its own ``CollectorRegistry``.

Counts that the core already keeps (tasks by outcome, retries, rejections,
agents by status, connections) are read from it at scrape time, so there is one
source of truth. Latency is a histogram fed by ``RouterProtocol.outcome_observer``:
per task it is one ``bisect`` and two additions on plain lists (``LatencyCounts``),
and it becomes a Prometheus histogram only at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from aicp.protocol import RouterProtocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from 100 µs (loopback round trips) to a minute (long tasks).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _CoreCollector(Collector):
    def __init__(
        self,
        proto: RouterProtocol,
        open_connections: Callable[[], int],
        transport_closes: Callable[[], Mapping[str, int]] | None,
        state_stats: Callable[[], Mapping[str, float] | None] | None = None,
    ) -> None:
        self.proto = proto
        self.state_stats = state_stats
        self.open_connections = open_connections
        self.transport_closes = transport_closes

    def collect(self) -> Iterator[Metric]:
        proto = self.proto
        stats = proto.router.stats
        tasks = CounterMetricFamily("aicp_tasks", "Tasks that ended, by outcome (completed or the error code)", labels=["outcome"])
        tasks.add_metric(["completed"], stats.completed)
        for code, n in sorted(stats.failed.items()):
            tasks.add_metric([code], n)
        yield tasks
        yield CounterMetricFamily("aicp_tasks_submitted", "Tasks accepted by the router core", value=stats.submitted)
        yield CounterMetricFamily("aicp_dispatches", "Dispatches of a task to an agent (first attempts and retries)", value=stats.dispatched)
        yield CounterMetricFamily("aicp_retries", "Task attempts retried on another agent", value=stats.retries)
        yield CounterMetricFamily("aicp_late_results", "Results that arrived after their task had moved on", value=stats.late_results)
        yield CounterMetricFamily("aicp_agents_lost", "Agents declared dead (disconnect, deregister, lease)", value=stats.agents_lost)
        rejections = CounterMetricFamily("aicp_rejections", "Frames refused, by wire error code", labels=["code"])
        for code, n in sorted(proto.rejections.items()):
            rejections.add_metric([code], n)
        yield rejections
        if self.transport_closes is not None:
            closes = CounterMetricFamily("aicp_transport_closes", "Connections closed or refused by a transport limit, by reason", labels=["reason"])
            for reason, n in sorted(self.transport_closes().items()):
                closes.add_metric([reason], n)
            yield closes
        agents = GaugeMetricFamily("aicp_agents", "Known agents by status", labels=["status"])
        for status, n in proto.router.registry.count_by_status().items():
            agents.add_metric([status], n)
        yield agents
        yield GaugeMetricFamily("aicp_open_connections", "Open WebSocket connections", value=self.open_connections())
        yield GaugeMetricFamily("aicp_tasks_in_flight", "Tasks in the router now", value=proto.pending_tasks())
        yield GaugeMetricFamily("aicp_bound_ids", "Peer ids bound to a key now (ephemeral ones until freed)", value=proto.bound_ids)
        frames = CounterMetricFamily("aicp_frames", "Frames received from peers", value=proto.counters["frames_in"])
        yield frames
        if self.state_stats is not None:
            st = self.state_stats()
            if st is not None:
                yield CounterMetricFamily("aicp_state_records", "Lasting-state records handed to the state file's writer and done with", value=st["written"])
                yield CounterMetricFamily("aicp_state_commits", "Transactions committed to the state file", value=st["commits"])
                yield CounterMetricFamily("aicp_state_commit_seconds", "Time the event loop spent committing to the state file", value=st["commit_seconds"])
                yield GaugeMetricFamily("aicp_state_commit_max_seconds", "The longest single commit to the state file", value=st["commit_max_seconds"])
                yield GaugeMetricFamily("aicp_state_backlog", "Lasting-state records not committed yet", value=st["backlog"])
                yield CounterMetricFamily("aicp_state_dropped", "Lasting-state records dropped because the writer fell too far behind", value=st["dropped"])
                yield CounterMetricFamily("aicp_state_write_errors", "Failed writes to the state file (their records are lost)", value=st["errors"])
                if "conflicts" in st:
                    yield CounterMetricFamily("aicp_state_binding_conflicts", "Bindings made here that another router had stored first (JetStream state)",
                                              value=st["conflicts"])
                if "bindings_expired" in st:
                    yield CounterMetricFamily("aicp_state_bindings_expired", "Bindings forgotten when this router started: not seen for --binding-ttl",
                                              value=st["bindings_expired"])
                if "rewatches" in st:
                    yield CounterMetricFamily("aicp_state_rewatches", "Watches of the shared bindings started again after a reconnect to the "
                                              "state server (JetStream state)", value=st["rewatches"])


class LatencyCounts(Collector):
    """Task latency by outcome as plain counters: O(log buckets) per observation, no locks, no label lookups.

    Buckets are upper bounds, inclusive (``le``), as in Prometheus; the last slot counts
    what is above every bound (``+Inf``).
    """

    OUTCOMES = ("completed", "failed")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = {outcome: [0] * (len(buckets) + 1) for outcome in self.OUTCOMES}
        self.sums = dict.fromkeys(self.OUTCOMES, 0.0)

    def observe(self, outcome: str, seconds: float) -> None:
        self.counts[outcome][bisect_left(self.buckets, seconds)] += 1
        self.sums[outcome] += seconds

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily("aicp_task_latency_seconds", "Time from a task's arrival at the router to its outcome", labels=["outcome"])
        for outcome in self.OUTCOMES:
            counts, running, cumulative = self.counts[outcome], 0, []
            for bound, n in zip((*self.buckets, float("inf")), counts):
                running += n
                cumulative.append((_bound_text(bound), running))
            family.add_metric([outcome], cumulative, self.sums[outcome])
        yield family


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class RouterMetrics:
    """One server's metrics. ``render()`` is the body of ``GET /metrics``."""

    def __init__(
        self,
        proto: RouterProtocol,
        open_connections: Callable[[], int],
        transport_closes: Callable[[], Mapping[str, int]] | None = None,
        state_stats: Callable[[], Mapping[str, float] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_CoreCollector(proto, open_connections, transport_closes, state_stats))
        self.latency = LatencyCounts()
        self.registry.register(self.latency)

    def observe_outcome(self, method: str, outcome: str, seconds: float) -> None:
        self.latency.observe("completed" if outcome == "completed" else "failed", seconds if seconds > 0.0 else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
