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


def test_driver_mode_runs_the_live_servers_and_nats_links_glue_and_every_step_is_timed() -> None:
    res = hop_core.measure(tasks=5, rounds=2, cold=False, driver=True)  # each step asserts the bytes that reach the peers
    for r in res["rounds"]:
        assert list(r["cross"]) == ["owner: task in", "remote: forwarded task in", "remote: result in", "owner: outcome in"]
        assert all(v > 0 for v in (*r["local"].values(), *r["cross"].values()))


def test_driver_mode_turns_a_pub_into_the_msg_nats_would_deliver() -> None:
    written = [b"PUB aicp.x.r.ra 5\r\nhel", b"lo\r\n"]
    assert hop_core._as_msg(written, b"aicp.x.r.ra", 2) == b"MSG aicp.x.r.ra 2 5\r\nhello\r\n"
    assert written == []
