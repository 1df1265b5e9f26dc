"""Scenario files: every shipped one loads; a typo is an error naming the field and the file."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from sim_helpers import SHIPPED, load

from aicp.sim import scenario as scenario_mod
from aicp.sim.scenario import CrashFault, PoissonArrival, ScenarioError

REQUIRED = {"baseline", "heterogeneous", "crash_storm", "flapping", "partition", "hotspot", "scale_1000", "mm1", "mmc"}

MINIMAL = """
name = "tiny"
duration_s = 2.0
[[agents]]
count = 2
capabilities = ["work"]
service_time = { dist = "constant", mean_ms = 1.0 }
[[workload]]
method = "work"
arrival = { process = "poisson", rate_per_s = 10.0 }
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_required_scenarios_are_shipped() -> None:
    assert REQUIRED <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_loads(name: str) -> None:
    s = load(name)
    assert s.name == name
    assert s.warmup_s < s.duration_s
    assert s.agents and s.workload


def test_issue_keys_are_spelled_as_documented() -> None:
    s = load("baseline")
    assert isinstance(s.workload[0].arrival, PoissonArrival)
    assert s.router.timeout_ms == 5000.0 and s.router.max_attempts == 3
    assert s.network.latency.mean_ms == 1.0
    crash = load("crash_storm").faults[0]
    assert isinstance(crash, CrashFault) and crash.agents == 10 and crash.until_s == 40.0


def test_minimal_scenario_gets_defaults(tmp_path: Path) -> None:
    s = scenario_mod.load(write(tmp_path, MINIMAL))
    assert s.replications == 5 and s.heartbeats == "aggregate" and s.signing == "modeled"
    assert s.agent_ids() == ["g0-0000", "g0-0001"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (MINIMAL.replace("duration_s", "duraton_s"), "duraton_s"),
        (MINIMAL.replace("rate_per_s", "rate_per_sec"), "rate_per_sec"),
        (MINIMAL.replace("count = 2", "count = 2\nconcurency = 4"), "concurency"),
        (MINIMAL + "[router]\ntimeout = 5.0\n", "timeout"),
        (MINIMAL + "[[faults]]\nat_s = 1.0\naction = 'crash'\nagent = 1\n", "agent"),
    ],
)
def test_typo_names_field_and_file(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text, "typo.toml")
    with pytest.raises(ScenarioError) as info:
        scenario_mod.load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"`{field}`" in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL.replace('"poisson"', '"poison"'), "poison"),
        (MINIMAL.replace('"constant", mean_ms', '"normal", mean_ms'), "normal"),
        (MINIMAL.replace("rate_per_s = 10.0", "rate_per_s = -1.0"), "rate_per_s"),
        ('strategies = ["round_robin", "fastest"]\n' + MINIMAL, "unknown strategy 'fastest'"),
        (MINIMAL.replace('method = "work"', 'method = "wrok"'), "wrok"),
        ("warmup_s = 5.0\n" + MINIMAL, "warmup_s (5.0) must be less than duration_s"),
        (MINIMAL + "[[faults]]\nat_s = 1.0\naction = 'crash'\nagents = ['nobody']\n", "nobody"),
        (MINIMAL + "[[faults]]\nat_s = 1.0\naction = 'explode'\n", "explode"),
        (
            MINIMAL.replace('{ process = "poisson", rate_per_s = 10.0 }', '{ process = "trace", file = "missing.csv" }'),
            "missing.csv",
        ),
    ],
)
def test_bad_values_are_errors_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ScenarioError) as info:
        scenario_mod.load(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not valid TOML"):
        scenario_mod.load(write(tmp_path, "name = \n"))
    with pytest.raises(ScenarioError, match="no such scenario file"):
        scenario_mod.load(tmp_path / "nope.toml")


def test_overrides_apply_and_are_validated() -> None:
    s = load("baseline", **{"workload.0.arrival.rate_per_s": 1500.0, "replications": 2})
    assert isinstance(s.workload[0].arrival, PoissonArrival) and s.workload[0].arrival.rate_per_s == 1500.0
    assert s.replications == 2
    with pytest.raises(ScenarioError, match="rate_per_sec"):
        load("baseline", **{"workload.0.arrival.rate_per_sec": 5.0})
    with pytest.raises(ScenarioError, match=r"no list item workload\.3"):
        load("baseline", **{"workload.3.method": "x"})


def test_resolved_scenario_round_trips() -> None:
    s = load("hotspot")
    data = scenario_mod.to_data(s)
    assert data["router"]["lease_s"] == 90.0  # defaults are written out
    again = scenario_mod.from_data(msgspec.json.decode(msgspec.json.encode(data)), "json")
    assert again == s


def test_parse_value() -> None:
    assert scenario_mod.parse_value("3") == 3
    assert scenario_mod.parse_value("2.5") == 2.5
    assert scenario_mod.parse_value("true") is True
    assert scenario_mod.parse_value("power_of_two") == "power_of_two"


ISSUE_EXAMPLE = """
name = "baseline"
seed = 7
duration_s = 600.0        # simulated seconds of arrivals
warmup_s = 60.0           # tasks arriving before this are left out of the statistics
replications = 5          # independent runs with derived seeds
strategies = ["round_robin", "random", "least_loaded", "power_of_two", "trust_weighted", "latency_ewma"]

[network]
latency = { dist = "lognormal", mean_ms = 1.0, sigma = 0.5 }   # one way, per hop

[[agents]]                # one or more groups
count = 100
capabilities = ["image.label"]
concurrency = 1
service_time = { dist = "exponential", mean_ms = 40.0 }
trust = 0.95

[[workload]]              # one or more streams
method = "image.label"
arrival = { process = "poisson", rate_per_s = 2000.0 }

[router]
timeout_ms = 5000.0
max_attempts = 3

[[faults]]
at_s = 200.0
action = "crash"          # crash | recover | slow | flap | partition | heal | heartbeat_loss | misbehave
agents = 10               # how many (or a list of agent ids)
"""


def test_the_issue_example_parses_as_written(tmp_path: Path) -> None:
    s = scenario_mod.load(write(tmp_path, ISSUE_EXAMPLE))
    assert s.replications == 5 and len(s.strategies) == 6 and s.agents[0].count == 100
    assert isinstance(s.faults[0], CrashFault) and s.faults[0].at_s == 200.0 and s.faults[0].agents == 10
    for action in ("recover", "slow", "flap", "partition", "heal", "heartbeat_loss", "misbehave"):
        scenario_mod.load(write(tmp_path, ISSUE_EXAMPLE.replace('action = "crash"', f'action = "{action}"'), f"{action}.toml"))


def test_replication_seeds_are_seedsequence_spawns() -> None:
    import numpy as np

    from aicp.sim.runner import replication_seed

    spawned = np.random.SeedSequence(7).spawn(3)
    for k in range(3):
        assert (replication_seed(7, k).generate_state(4) == spawned[k].generate_state(4)).all()
