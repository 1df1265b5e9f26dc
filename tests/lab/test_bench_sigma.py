"""``aicp bench --service-sigma``: a lognormal's shape reaches the live agents (plain runs, ``--arrivals``) and the what-if flow."""

from __future__ import annotations

import argparse
from pathlib import Path

from aicp import trace
from aicp.lab import whatif
from aicp.lab.bench import live
from aicp.lab.bench.scenario_run import arrivals_plan


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_passes_a_lognormal_s_sigma_and_refuses_it_elsewhere(tmp_path: Path) -> None:
    args = _args("--service-time", "lognormal:8", "--service-sigma", "0.9", "--agents", "3", "--agent-procs", "1")
    assert live.check_sigma(args) == "" and args.agent_sigma == 0.9
    spawned: list[list[str]] = []

    class Spawner:
        def spawn(self, role: str, argv: list[str]) -> None:
            spawned.append(argv)

    live.start_agents(Spawner(), "ws://127.0.0.1:1", args)  # type: ignore[arg-type]
    assert spawned and spawned[0][spawned[0].index("--service-sigma") + 1] == "0.9"
    live.start_agents(Spawner(), "ws://127.0.0.1:1", _args("--service-time", "lognormal:8"))
    assert "--service-sigma" not in spawned[1]  # the agents' own default (0.5)
    assert "lognormal" in live.check_sigma(_args("--service-time", "exponential:8", "--service-sigma", "0.9"))
    assert "--scenario" in live.check_sigma(_args("--scenario", "x.toml", "--service-sigma", "0.9"))
    assert "at least 0" in live.check_sigma(_args("--service-time", "lognormal:8", "--service-sigma", "-1"))
    assert live.run(_args("--service-time", "constant:1", "--service-sigma", "0.9", "--out", str(tmp_path))) == 2  # before any process


def test_arrivals_agents_and_the_what_if_flow_keep_the_sigma(tmp_path: Path) -> None:
    src = tmp_path / "recorded.jsonl"
    events: list[trace.TraceEvent] = [trace.Header(t=1.0, v=1, router="r", strategy="round_robin", config={})]
    events += [trace.Arrive(t=1.0 + 0.01 * i, task=f"c/{i}", method="m", bytes=40) for i in range(3)]
    src.write_bytes(b"".join(trace.encode(e) for e in events))
    plan = arrivals_plan(src, _args("--service-time", "lognormal:8", "--service-sigma", "1.2", "--agents", "2"))
    assert [s.service_time for p in plan.procs for s in p.agents] == [{"dist": "lognormal", "mean_ms": 8.0, "sigma": 1.2}] * 2
    plain = arrivals_plan(src, _args("--service-time", "exponential:8", "--agents", "1"))
    assert plain.procs[0].agents[0].service_time == {"dist": "exponential", "mean_ms": 8.0}
    scenario = tmp_path / "w.toml"
    scenario.write_text(
        'name = "w"\nduration_s = 5\nwarmup_s = 1\nstrategies = ["round_robin"]\n'
        '[[agents]]\ncount = 3\ncapabilities = ["m"]\nconcurrency = 2\nservice_time = { dist = "lognormal", mean_ms = 8.0, sigma = 0.8 }\n'
        '[[workload]]\nmethod = "m"\narrival = { process = "poisson", rate_per_s = 100 }\n'
    )
    flags = whatif.agent_flags(scenario)
    assert flags[flags.index("--service-sigma") + 1] == "0.8" and flags[flags.index("--service-time") + 1] == "lognormal:8.0"
    parsed = _args("--arrivals", str(src), *flags)
    assert live.check_sigma(parsed) == "" and arrivals_plan(src, parsed).procs[0].agents[0].service_time["sigma"] == 0.8
