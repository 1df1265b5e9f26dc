"""Faults scheduled by time: one small SimPy process per ``[[faults]]`` entry.

``agents = N`` picks N agents at random (fault stream of the seed) among those
the fault can apply to; ``recover`` and ``heal`` pick among the agents crashed or
partitioned, oldest first. ``agents = ["g0-0001", ...]`` names them.

A fault sees the environment, the agents, and a ``FaultTarget`` (the life cycle's
crash, recover, partition and heal), nothing of the driver or the router.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Protocol

import numpy as np
import simpy

from aicp.sim.agents import SimAgent
from aicp.sim.scenario import (
    CrashFault,
    Fault,
    FlapFault,
    HealFault,
    HeartbeatLossFault,
    MisbehaveFault,
    PartitionFault,
    RecoverFault,
    SlowFault,
)


class FaultTarget(Protocol):
    """What faults do to agents' processes and connections (``aicp.sim.lifecycle.Lifecycle``)."""

    @property
    def crashed(self) -> Iterable[SimAgent]:
        """Crashed agents, oldest crash first."""
        ...

    @property
    def partitioned_order(self) -> Iterable[SimAgent]:
        """Partitioned agents, oldest partition first."""
        ...

    def is_partitioned(self, agent: SimAgent) -> bool: ...

    def crash(self, agent: SimAgent) -> None: ...

    def recover(self, agent: SimAgent) -> None: ...

    def partition(self, agent: SimAgent) -> None: ...

    def heal(self, agent: SimAgent) -> None: ...


def start(
    env: simpy.Environment, faults: list[Fault], rng: np.random.Generator, agents: Sequence[SimAgent], life: FaultTarget
) -> None:
    for fault in faults:
        env.process(_run(env, agents, life, fault, rng))


def _pick(
    agents: Sequence[SimAgent], fault: Fault, pool: list[SimAgent], rng: np.random.Generator, oldest_first: bool = False
) -> list[SimAgent]:
    if isinstance(fault.agents, list):
        wanted = set(fault.agents)
        return [a for a in agents if a.agent_id in wanted]
    n = min(fault.agents, len(pool))
    if oldest_first:
        return pool[:n]
    if n == 0:
        return []
    idx = np.sort(rng.choice(len(pool), size=n, replace=False))
    return [pool[int(i)] for i in idx.tolist()]


def _run(
    env: simpy.Environment, agents: Sequence[SimAgent], life: FaultTarget, fault: Fault, rng: np.random.Generator
) -> Generator[simpy.Event, None, None]:
    yield env.timeout(fault.at_s)
    until = getattr(fault, "until_s", None)
    if isinstance(fault, CrashFault | FlapFault):
        chosen = _pick(agents, fault, [a for a in agents if a.up], rng)
        if isinstance(fault, CrashFault):
            if fault.over_s > 0.0 and len(chosen) > 1:
                gap = fault.over_s / len(chosen)
                for k, a in enumerate(chosen):
                    if k:
                        yield env.timeout(gap)
                    life.crash(a)
            else:
                for a in chosen:
                    life.crash(a)
            if until is not None:
                yield env.timeout(max(0.0, until - env.now))
                for a in chosen:
                    life.recover(a)
            return
        half = fault.period_s / 2.0
        end = until if until is not None else float("inf")
        while env.now < end:
            for a in chosen:
                life.crash(a)
            yield env.timeout(min(half, end - env.now))
            for a in chosen:
                life.recover(a)
            if env.now >= end:
                return
            yield env.timeout(min(half, end - env.now))
        return
    if isinstance(fault, RecoverFault):
        for a in _pick(agents, fault, [a for a in life.crashed if not a.up], rng, oldest_first=True):
            life.recover(a)
        return
    if isinstance(fault, PartitionFault):
        chosen = _pick(agents, fault, [a for a in agents if not life.is_partitioned(a)], rng)
        for a in chosen:
            life.partition(a)
        if until is not None:
            yield env.timeout(until - fault.at_s)
            for a in chosen:
                life.heal(a)
        return
    if isinstance(fault, HealFault):
        pool = [a for a in life.partitioned_order if life.is_partitioned(a)]
        for a in _pick(agents, fault, pool, rng, oldest_first=True):
            life.heal(a)
        return
    chosen = _pick(agents, fault, list(agents), rng)
    if isinstance(fault, SlowFault):
        for a in chosen:
            a.slow = fault.factor
    elif isinstance(fault, HeartbeatLossFault):
        for a in chosen:
            a.hb_lost = True
    elif isinstance(fault, MisbehaveFault):
        for a in chosen:
            a.misbehave = True
    if until is None:
        return
    yield env.timeout(until - fault.at_s)
    for a in chosen:
        if isinstance(fault, SlowFault):
            a.slow = 1.0
        elif isinstance(fault, HeartbeatLossFault):
            a.hb_lost = False
        elif isinstance(fault, MisbehaveFault):
            a.misbehave = False
