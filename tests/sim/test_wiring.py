"""The simulator's parts run on their own: each gets the environment and named collaborators, not the driver."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import simpy

from aicp.router import Action, Dispatch, Router, RouterConfig
from aicp.sim.agents import SimAgent
from aicp.sim.lifecycle import Lifecycle
from aicp.sim.network import Link
from aicp.sim.streams import Stream

PARTS = Path(__file__).resolve().parents[2] / "aicp" / "sim"


def test_parts_neither_import_the_engine_nor_read_simpy_private_state() -> None:
    for name in ("agents.py", "faults.py", "lifecycle.py", "streams.py", "network.py"):
        tree = ast.parse((PARTS / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "aicp.sim.engine" not in imported, name
        private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("_value", "_ok", "sim")]
        assert private == [], (name, private)


def agent(env: simpy.Environment, done: list[tuple[float, str, bool]], concurrency: int = 2) -> SimAgent:
    def report(a: SimAgent, task: str, ok: bool) -> None:
        done.append((env.now, task, ok))

    return SimAgent(env, 0, "a-0", 0, ["work"], concurrency, lambda: 1.0, 1.0, 0.0, None, 0.0, None, random.random, report)


def test_agent_alone_is_a_fifo_queue_in_front_of_c_slots() -> None:
    env = simpy.Environment()
    done: list[tuple[float, str, bool]] = []
    a = agent(env, done)
    for task in "01234":
        a.receive((task, None))
    a.receive(("9", 0.25))  # a fixed service time (trace replay) waits its turn too
    env.run()
    assert done == [(1.0, "0", True), (1.0, "1", True), (2.0, "2", True), (2.0, "3", True), (2.25, "9", True), (3.0, "4", True)]
    assert a.served == 6 and a.busy == 0 and a.busy_time == 5.25


def test_agent_reset_drops_work_in_hand() -> None:
    env = simpy.Environment()
    done: list[tuple[float, str, bool]] = []
    a = agent(env, done, concurrency=1)
    a.receive(("1", None))
    a.receive(("2", None))
    env.run(until=0.5)
    a.reset()
    env.run()
    assert done == [] and a.served == 0


class Recorder:
    """A driver that only records what the router asked for."""

    def __init__(self) -> None:
        self.actions: list[Action] = []
        self.rearms = 0

    def apply(self, actions: list[Action], now: float | None = None) -> None:
        self.actions.extend(actions)

    def rearm(self) -> None:
        self.rearms += 1


def test_lifecycle_with_a_real_router_and_link_but_no_simulation() -> None:
    env = simpy.Environment()
    router = Router(RouterConfig(), "round_robin", random.Random(1))
    link = Link(env, lambda: 0.001, 0.0, random.random)
    done: list[tuple[float, str, bool]] = []
    agents = [agent(env, done)]
    driver = Recorder()
    life = Lifecycle(env, router, link, agents, driver, reconnect_s=1.0)
    router.register_agent("a-0", ["work"], 0.0)
    router.submit("t1", "work", 0.0)
    life.crash(agents[0])
    assert life.up_count == 0 and list(life.crashed) == agents
    env.run(until=0.01)  # the router hears of the closed connection one hop later
    assert router.registry.get("a-0") is not None and router.registry.count_by_status()["dead"] == 1
    assert driver.rearms == 1
    life.recover(agents[0])
    env.run(until=0.02)
    assert life.up_count == 1 and not life.crashed and router.registry.count_by_status()["active"] == 1
    assert any(type(a) is Dispatch for a in router.submit("t2", "work", env.now))


def test_stream_submits_through_its_intake() -> None:
    class Intake:
        stopped = False

        def __init__(self) -> None:
            self.got: list[tuple[float, int]] = []
            self.done = 0

        def submit(self, method: int, timeout_s: float | None, service_s: float | None, lag_s: float = 0.0) -> None:
            self.got.append((env.now, method))

        def stream_done(self) -> None:
            self.done += 1

        def method_index(self, method: str) -> int:
            return 0

    env = simpy.Environment()
    intake = Intake()
    Stream(env, intake, iter([0.5, 1.0, 2.5]), 3, None).start()
    env.run()
    assert intake.got == [(0.5, 3), (1.0, 3), (2.5, 3)] and intake.done == 1
