"""Faults scheduled by time: one small SimPy process per ``[[faults]]`` entry.

``agents = N`` picks N agents at random (fault stream of the seed) among those
the fault can apply to; ``recover`` and ``heal`` pick among the agents crashed or
partitioned, oldest first. ``agents = ["g0-0001", ...]`` names them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from aicp.sim.engine import Simulation


def start(sim: Simulation, faults: list[Fault], rng: np.random.Generator) -> None:
    for fault in faults:
        sim.env.process(_run(sim, fault, rng))


def _pick(
    sim: Simulation, fault: Fault, pool: list[SimAgent], rng: np.random.Generator, oldest_first: bool = False
) -> list[SimAgent]:
    if isinstance(fault.agents, list):
        wanted = set(fault.agents)
        return [a for a in sim.agents if a.agent_id in wanted]
    n = min(fault.agents, len(pool))
    if oldest_first:
        return pool[:n]
    if n == 0:
        return []
    idx = np.sort(rng.choice(len(pool), size=n, replace=False))
    return [pool[int(i)] for i in idx.tolist()]


def _run(sim: Simulation, fault: Fault, rng: np.random.Generator) -> Generator[simpy.Event, None, None]:
    env = sim.env
    yield env.timeout(fault.at_s)
    until = getattr(fault, "until_s", None)
    if isinstance(fault, CrashFault | FlapFault):
        chosen = _pick(sim, fault, [a for a in sim.agents if a.up], rng)
        if isinstance(fault, CrashFault):
            for a in chosen:
                sim.life.crash(a)
            if until is not None:
                yield env.timeout(until - fault.at_s)
                for a in chosen:
                    sim.life.recover(a)
            return
        half = fault.period_s / 2.0
        end = until if until is not None else float("inf")
        while env.now < end:
            for a in chosen:
                sim.life.crash(a)
            yield env.timeout(min(half, end - env.now))
            for a in chosen:
                sim.life.recover(a)
            if env.now >= end:
                return
            yield env.timeout(min(half, end - env.now))
        return
    if isinstance(fault, RecoverFault):
        for a in _pick(sim, fault, [a for a in sim.life.crashed if not a.up], rng, oldest_first=True):
            sim.life.recover(a)
        return
    if isinstance(fault, PartitionFault):
        chosen = _pick(sim, fault, [a for a in sim.agents if a.index not in sim.link.partitioned], rng)
        for a in chosen:
            sim.life.partition(a)
        if until is not None:
            yield env.timeout(until - fault.at_s)
            for a in chosen:
                sim.life.heal(a)
        return
    if isinstance(fault, HealFault):
        pool = [a for a in sim.life.partitioned_order if a.index in sim.link.partitioned]
        for a in _pick(sim, fault, pool, rng, oldest_first=True):
            sim.life.heal(a)
        return
    chosen = _pick(sim, fault, list(sim.agents), rng)
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
