"""``aicp plan-cluster``: the cluster simulator's curve as routers are added (small sizes here)."""

from __future__ import annotations

import json
from pathlib import Path

from aicp.cli import main


def test_plan_cluster_adds_routers_and_the_saturated_single_router_recovers(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    # 300 agents x 1 s: capacity 300/s, offered 210/s; one router at 6 ms/task can do ~167/s, two can do ~333/s
    rc = main(["plan-cluster", "--agents", "300", "--routers", "1,2", "--duration", "4", "--warmup", "1", "--task-cpu-us", "6000",
               "--hop-cpu-us", "100", "--deadline-ms", "6000", "--json", str(out)])
    assert rc == 0
    curve = json.loads(out.read_text())["curve"]
    one, two = curve
    assert one["routers"] == 1 and two["routers"] == 2
    assert one["lost"] == two["lost"] == 0 and one["duplicates"] == two["duplicates"] == 0
    assert one["router_cpu_busy"] > 1.0  # offered more than one router's CPU
    assert two["router_cpu_busy"] < 0.8
    assert two["throughput_per_s"] > one["throughput_per_s"]
    assert two["p50_ms"] < one["p50_ms"] * 0.8  # the queue at the one router's CPU is gone
    assert two["failed"] < one["failed"]
