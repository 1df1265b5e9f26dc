"""bench hop_core: the machinery, not the figures (no timing assertion here)."""

from __future__ import annotations

from aicp.lab.bench import hop_core


def test_a_cross_router_task_goes_owner_remote_agent_and_back_and_every_step_is_timed() -> None:
    res = hop_core.measure(tasks=5, rounds=2, cold=False)  # each step asserts where its frames go
    assert len(res["rounds"]) == 2
    for r in res["rounds"]:
        assert list(r["local"]) == ["task in", "result in"]
        assert list(r["cross"]) == ["owner: task in", "remote: forwarded task in", "remote: result in", "owner: outcome in"]
        assert all(v > 0 for v in (*r["local"].values(), *r["cross"].values()))
        assert r["cross_us"] == sum(r["cross"].values())
    assert res["ratio"] == res["cross_us"] / res["local_us"]


def test_cold_mode_evicts_before_each_step() -> None:
    hop = hop_core.Hop(cold=True)
    assert hop._junk is not None and len(hop._junk) == hop_core.EVICT_BYTES and hop._fill[1] == 1
    hop._junk[0] = 1
    hop._evict()
    assert hop._junk[0] == 0 and hop._junk[1] == 1
    assert hop_core.Hop(cold=False)._junk is None
