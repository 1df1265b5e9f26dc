"""The registry's per-capability lists, kept incrementally, equal a rebuild from scratch (local and remote agents mixed)."""

from __future__ import annotations

import random

import pytest

from aicp.registry import AgentState, Registry, Status


@pytest.mark.parametrize("seed", range(20))
def test_incremental_lists_match_a_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    reg = Registry()
    caps = ["a", "b", "c"]
    for i in range(60):
        op = rng.random()
        if op < 0.6 or not reg.agents:
            state = AgentState(f"x{i}", rng.sample(caps, rng.randint(1, 3)), 1, 0.5, 0.0, 90.0)
            state.remote = rng.random() < 0.2
            reg.add(state)
        elif op < 0.85:
            state = rng.choice(list(reg.agents.values()))
            reg.set_status(state, rng.choice(list(Status)))
        else:
            reg.remove(rng.choice(list(reg.agents)))
        for cap in caps:
            members = [a for a in reg.agents.values() if cap in a.capabilities]
            active = [a for a in members if a.status is Status.ACTIVE]
            assert reg.agents_with(cap) == active
            assert reg.local_agents_with(cap) == [a for a in active if not a.remote]
