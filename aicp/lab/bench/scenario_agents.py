"""Agents of a scenario, live: ``python -m aicp.lab.bench.scenario_agents --spec FILE.json``.

``aicp bench --scenario`` starts one such process per group chunk, and one per agent
that a fault kills (so a SIGKILL takes exactly that agent down). Each agent is an
``aicp.Agent`` with the scenario's id (``<group name>-0000``), capabilities and
concurrency, serving every capability with a handler that:

* sleeps a service time drawn by the simulator's own sampler
  (``aicp.sim.distributions.seconds``: constant, exponential, lognormal with its
  ``sigma``, empirical files with their ``scale``), divided by the group's ``speed``,
  asking the timer for it a lead early as the synthetic handler does
  (``aicp.live.handlers.timer_sleep_s``), so that it lasts the draw on average;
* fails with probability ``fail_prob`` after the service, as the simulator's agents do.

The network latency of the scenario (``[network] latency``, one way, per hop between
router and agent) is a delay at the agent: a task is handed to the agent's queue one
hop after it arrived, and a result is sent one hop after it was ready. The handler
time the agent signs into its result (``service_ms``) excludes both hops. The load
generator's hops to the router are not delayed; nor are they in the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from aicp.live.agent import Agent
from aicp.live.client import AICPWebSocketClient
from aicp.live.handlers import timer_sleep_s
from aicp.live.loop import run_async
from aicp.messages import Task
from aicp.peer import Received
from aicp.sim import distributions
from aicp.sim.scenario import Dist

#: An agent's queue beyond its concurrency: unbounded in the simulator, so very large here.
MAX_QUEUED = 1_000_000


class ScenarioService:
    """The handler: a service time from the scenario's distribution, then success or a failure."""

    def __init__(self, dist: Dist, speed: float, fail_prob: float, seed: int) -> None:
        """``dist``: an empirical file's path is absolute (the plan resolves it)."""
        self.rng = np.random.default_rng(seed)
        self.draw = distributions.seconds(dist, self.rng, None)
        self.speed = speed
        self.fail_prob = fail_prob

    async def __call__(self, payload: Any) -> dict[str, Any]:
        delay = self.draw() / self.speed
        if delay > 0.0:
            await asyncio.sleep(timer_sleep_s(delay))  # woken a lead early: on average it lasts ``delay`` (handlers.SLEEP_LEAD_MS)
        if self.fail_prob > 0.0 and self.rng.random() < self.fail_prob:
            raise RuntimeError("scenario failure (fail_prob)")
        return {"service_ms": round(delay * 1000.0, 3)}


class DelayedClient(AICPWebSocketClient):
    """An agent connection whose task and result frames each wait one network hop."""

    def __init__(self, *args: Any, hop_s: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hop_s = hop_s

    def _on_task(self, rec: Received, task: Task) -> None:
        delay = self.hop_s()
        if delay <= 0.0:
            super()._on_task(rec, task)
        else:
            asyncio.get_running_loop().call_later(delay, super()._on_task, rec, task)

    async def _send_result(self, frame: bytes) -> None:
        delay = self.hop_s()
        if delay > 0.0:
            await asyncio.sleep(delay)
        await super()._send_result(frame)


def build(spec: dict[str, Any]) -> list[Agent]:
    """The agents of one process from its spec (written by ``aicp.lab.bench.scenario_plan``)."""
    dist_type: Any = Dist
    latency = msgspec.convert(spec["latency"], dist_type) if spec.get("latency") else None
    agents = []
    for a in spec["agents"]:
        agent = Agent(a["id"], spec["url"], concurrency=a["concurrency"], drain_timeout=1.0)
        if latency is not None:
            hop = distributions.seconds(latency, np.random.default_rng(a["seed"] + 7919), None)
            client = agent.client
            agent.client = DelayedClient(spec["url"], a["id"], client.identity, concurrency=a["concurrency"], max_queued=MAX_QUEUED, hop_s=hop)
        else:
            agent.client.max_queued = MAX_QUEUED
        service = ScenarioService(msgspec.convert(a["service_time"], dist_type), a["speed"], a["fail_prob"], a["seed"])
        for cap in a["capabilities"]:
            agent.handler(cap)(service)
        agents.append(agent)
    return agents


async def _main(spec: dict[str, Any]) -> int:
    agents = build(spec)
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for a in agents:
            a.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    results = await asyncio.gather(*(a.serve() for a in agents), return_exceptions=True)
    return 1 if any(isinstance(r, BaseException) for r in results) else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", type=Path, required=True, help="JSON spec of this process's agents")
    args = p.parse_args()
    raise SystemExit(run_async(_main(json.loads(args.spec.read_text()))))


if __name__ == "__main__":
    main()
