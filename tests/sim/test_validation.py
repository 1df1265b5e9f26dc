"""The simulator against queueing theory: M/M/1 at loads 0.5 and 0.9, M/M/10 (Erlang C) at 0.9.

Zero network latency, zero signing cost, one agent with a FIFO mailbox: the
router's dispatch is instantaneous, so the agent is exactly an M/M/c queue.
Five replications per case (seeds from the scenario files, fixed before any
result was seen); the theoretical mean time in system must lie inside the 95%
confidence interval and within 3% of the estimate. The replication sizes are
what keeps the standard error near 1% at load 0.9 in about 20 s on two cores.
"""

from __future__ import annotations

from typing import Any

import pytest
from sim_helpers import load

from aicp.sim.runner import RunSpec, run_many
from aicp.sim.stats import mean_ci
from aicp.sim.theory import mm1_sojourn, mmc_sojourn

REPLICATIONS = 5
#: case -> (scenario file, servers, service rate per s, load, tasks per replication)
CASES: dict[str, tuple[str, int, float, float, int]] = {
    "mm1-rho0.5": ("mm1", 1, 1000.0, 0.5, 60_000),
    "mm1-rho0.9": ("mm1", 1, 1000.0, 0.9, 400_000),
    "mm10-rho0.9": ("mmc", 10, 100.0, 0.9, 300_000),
}


def replicate(case: str) -> list[float]:
    """Mean time in system (ms) of each replication of ``case``, run on two processes."""
    file, c, mu, rho, n = CASES[case]
    lam = rho * c * mu
    s = load(file, **{"workload.0.arrival.rate_per_s": lam, "max_tasks": n, "duration_s": 2.0 * n / lam, "warmup_s": 5.0})
    assert s.agents[0].concurrency == c and s.agents[0].service_time.mean_ms == pytest.approx(1000.0 / mu)
    assert s.sign_cost_us == 0.0 and s.verify_cost_us == 0.0 and s.network.latency.mean_ms == 0.0
    means = []
    for outcome in run_many([RunSpec(s, "round_robin", k, s.seed) for k in range(REPLICATIONS)], jobs=2, progress=False):
        summ: dict[str, Any] = outcome.summary
        assert summ["error"] is None and summ["lost"] == 0 and summ["failed"] == 0
        assert summ["tasks"] > 0.95 * n
        means.append(summ["latency_ms"]["mean"])
    return means


@pytest.mark.slow
@pytest.mark.timeout(300)  # a hang guard only: on a busy machine the 0.9 cases come near the suite's 120 s
@pytest.mark.parametrize("case", list(CASES))
def test_mean_time_in_system_matches_theory(case: str) -> None:
    _, c, mu, rho, _ = CASES[case]
    lam = rho * c * mu
    theory_ms = 1000.0 * (mm1_sojourn(lam, mu) if c == 1 else mmc_sojourn(c, lam, mu))
    estimates = replicate(case)
    assert len(set(estimates)) == REPLICATIONS  # independent replications
    mean, half = mean_ci(estimates)
    assert mean is not None and half is not None
    print(f"{case}: theory {theory_ms:.4f} ms, simulated {mean:.4f} ± {half:.4f} ms ({(mean - theory_ms) / theory_ms:+.2%})")
    assert abs(mean - theory_ms) <= half, f"{theory_ms} outside {mean} ± {half}"
    assert abs(mean - theory_ms) <= 0.03 * theory_ms


def test_theory_formulas() -> None:
    assert mm1_sojourn(900.0, 1000.0) == pytest.approx(0.01)
    assert mmc_sojourn(1, 900.0, 1000.0) == pytest.approx(0.01)  # Erlang C with one server is M/M/1
    assert mmc_sojourn(10, 900.0, 100.0) == pytest.approx(0.0166873, rel=1e-5)
    with pytest.raises(ValueError):
        mm1_sojourn(2.0, 1.0)
