"""Simulated agents: a FIFO mailbox in front of ``concurrency`` service slots.

An agent is driven by SimPy events: a task that finds a free slot starts a
service timeout at once, others wait in the mailbox in arrival order. One
concurrency-``c`` agent with exponential service is exactly an M/M/c queue. The
completion callback (not a generator per task) keeps it to one event per task.

A crash bumps ``epoch``: completions started before it are ignored, the mailbox
is emptied, and nothing is answered until the agent registers again.

An agent knows three things outside itself (desmod style: the environment plus
named connections, no back-pointer to the driver): ``env`` for its service
timeouts, ``uniform`` for its failure draws, and ``report``, the link towards the
router that takes ``(agent, task, ok)`` when a task finishes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import simpy
from simpy.events import Timeout

from aicp.signing import Identity

ResultSink = Callable[["SimAgent", str, bool], None]
"""Where a finished task goes: ``report(agent, task id, ok)``."""


class SimAgent:
    __slots__ = (
        "agent_id",
        "busy",
        "busy_time",
        "capabilities",
        "concurrency",
        "connected",
        "cost_s",
        "env",
        "epoch",
        "fail_prob",
        "group",
        "hb_lost",
        "identity",
        "index",
        "mailbox",
        "misbehave",
        "report",
        "served",
        "service",
        "slow",
        "speed",
        "thaw",
        "trust",
        "uniform",
        "up",
    )

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        agent_id: str,
        group: int,
        capabilities: list[str],
        concurrency: int,
        service: Callable[[], float],
        speed: float,
        fail_prob: float,
        trust: float | None,
        cost_s: float,
        identity: Identity | None,
        uniform: Callable[[], float],
        report: ResultSink,
    ) -> None:
        self.env = env
        self.uniform = uniform
        self.report = report
        self.index = index
        self.agent_id = agent_id
        self.group = group
        self.capabilities = capabilities
        self.concurrency = concurrency
        self.service = service
        self.speed = speed
        self.fail_prob = fail_prob
        self.trust = trust
        self.cost_s = cost_s  # modeled CPU per task: verify the task, sign the result
        self.identity = identity
        self.busy = 0
        self.busy_time = 0.0
        self.served = 0
        self.mailbox: deque[tuple[str, float | None]] = deque()
        self.up = True  # the process is running
        self.connected = True  # the router has it registered (as far as the agent knows)
        self.slow = 1.0
        self.misbehave = False
        self.hb_lost = False
        self.epoch = 0
        #: when its process stalls (a calibrated run's stall track): ``thaw(t)`` is the first moment at or after ``t``
        #: at which the process runs. A task that arrives in a stall starts at its end, one due to end in it ends then.
        self.thaw: Callable[[float], float] | None = None

    # ------------------------------------------------------------------ tasks
    def receive(self, message: tuple[str, float | None]) -> None:
        """A task arrives from the router: ``(task id, service seconds from a trace or None)``."""
        if not self.up:
            return
        busy = self.busy
        if busy < self.concurrency:
            self.busy = busy + 1  # _start(), inlined
            task, fixed = message
            duration = (fixed if fixed is not None else self.service()) * self.slow / self.speed + self.cost_s
            hold = duration if self.thaw is None else self._thawed(duration)
            Timeout(self.env, hold, (task, self.epoch, duration)).callbacks.append(self._done)  # type: ignore[union-attr]
        else:
            self.mailbox.append(message)

    def _start(self, message: tuple[str, float | None]) -> None:
        self.busy += 1
        task, fixed = message
        duration = (fixed if fixed is not None else self.service()) * self.slow / self.speed + self.cost_s
        hold = duration if self.thaw is None else self._thawed(duration)
        Timeout(self.env, hold, (task, self.epoch, duration)).callbacks.append(self._done)  # type: ignore[union-attr]

    def _thawed(self, duration: float) -> float:
        """How long from now a task of ``duration`` started now holds its slot when the process stalls: it starts
        when the process next runs and ends when the process next runs after its duration."""
        thaw, now = self.thaw, self.env.now
        assert thaw is not None
        return thaw(thaw(now) + duration) - now

    def _done(self, event: Timeout) -> None:
        value: tuple[str, int, float] = event.value  # type: ignore[assignment]
        task, epoch, duration = value
        if epoch != self.epoch:
            return  # crashed or dropped by the router since this task started
        self.busy -= 1
        self.busy_time += duration
        self.served += 1
        if self.mailbox:
            self._start(self.mailbox.popleft())
        ok = True if self.fail_prob == 0.0 else self.uniform() >= self.fail_prob
        self.report(self, task, ok)

    # ------------------------------------------------------------------ life cycle
    def reset(self) -> None:
        """Lose all work in hand (crash, or the router closed the connection)."""
        self.epoch += 1
        self.busy = 0
        self.mailbox.clear()

    def sign(self, body: bytes) -> bytes:
        assert self.identity is not None
        sig = self.identity.sign(body)
        if self.misbehave:
            sig = bytes([sig[0] ^ 0x01]) + sig[1:]
        return sig
