"""A bare SimPy join-the-shortest-queue model: the yardstick for the simulator's speed.

``servers`` single-server stations, Poisson arrivals, exponential service, and each
arrival sent to the station with the fewest customers (waiting + in service), ties
to the lowest index: the model ``aicp bench-sim`` runs through the aicp simulator as
100 agents under ``least_loaded``. Written the way the SimPy documentation writes
models (a ``Resource`` per station, a process per customer), without the router,
the records or the faults, and with the queue lengths kept in a list so that the
join-the-shortest-queue choice is a scan in C (``min`` + ``index``), not in Python.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator
from dataclasses import dataclass

import simpy


@dataclass
class JsqResult:
    customers: int
    wall_s: float
    mean_s: float  # mean time in system

    @property
    def per_wall_s(self) -> float:
        return self.customers / self.wall_s if self.wall_s > 0 else 0.0


def run(customers: int, servers: int = 100, rate_per_s: float = 900.0, mean_service_s: float = 0.1, seed: int = 1) -> JsqResult:
    """Simulate ``customers`` arrivals to the end; wall time covers ``env.run()`` only."""
    env = simpy.Environment()
    rng = random.Random(seed)
    stations = [simpy.Resource(env, capacity=1) for _ in range(servers)]
    in_system = [0] * servers  # customers at each station, waiting or in service
    total = [0.0]
    mu = 1.0 / mean_service_s

    def customer(k: int) -> Generator[simpy.Event, None, None]:
        arrived = env.now
        with stations[k].request() as req:
            yield req
            yield env.timeout(rng.expovariate(mu))
        in_system[k] -= 1
        total[0] += env.now - arrived

    def source() -> Generator[simpy.Event, None, None]:
        for _ in range(customers):
            yield env.timeout(rng.expovariate(rate_per_s))
            k = in_system.index(min(in_system))
            in_system[k] += 1
            env.process(customer(k))

    env.process(source())
    t0 = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t0
    return JsqResult(customers, wall, total[0] / customers)
