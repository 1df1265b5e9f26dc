"""The live stack's own costs, measured by ``aicp calibrate``, as the simulator charges them.

Without a calibration the simulator models an ideal stack: a task reaches its agent
after one network hop, the agent's slot is held for the drawn service time plus a
modeled signing cost, and the latency is taken at the router. The live system adds
costs of its own, and at 50-85% utilisation a small addition to what holds an
agent's slot raises queueing a lot. A calibration file (JSON, written by
``aicp calibrate``, named by a scenario's ``[calibration] file = ...``) holds what was
measured on one machine, per task, from a recorded live run with idle agents:

* ``timer_ms``: the agent's timer granularity. The synthetic handler sleeps with
  ``asyncio.sleep``; uvloop rounds a delay to whole milliseconds, so the agent is
  busy for ``round(d)``, not ``d``.
* ``lead_ms``: how much earlier than its draw the agent asks to be woken
  (``aicp.live.handlers.SLEEP_LEAD_MS``; 0 in calibrations of agents before it): the
  agent is busy for ``round(max(0, d - lead))`` plus the wake-up (:func:`timer_sleep`).
* ``wake_ms``: how much longer than its rounded request a sleep lasts (the event
  loop's wake-up, process scheduling on a shared machine). ``service_ms`` signed by
  the agent minus the constant service of the probe.
* ``slot_ms``: what holds a busy agent's slot beyond its handler: signing and sending
  the result, and handing the slot to the next task on the event loop. The mean, over
  back-to-back tasks of one busy agent, of the time between their results minus the
  second's ``service_ms``.
* ``agent_overhead_ms``: at the router, from dispatch to result, minus the agent's
  signed ``service_ms``: the frame hops both ways, the agent's verify and decode,
  its result signing, the router's verify. Charged half on the way out, half back
  (less the part inside the slot), so the router's in-flight count, which
  ``least_loaded`` reads, includes the hops as it does live.
* ``client_ms``: at the load generator, latency from the intended send time minus the
  router's own arrival-to-end time: sending late on a millisecond timer, signing,
  the hops between load generator and router, verifying the outcome. Outside the
  router's queues, so it is added to each task's latency.
* ``intake_t_s``, ``intake_ms`` (optional, a run's calibration): the way into the router as a
  track in time, each recorded task's intended send time and how long after it the router read
  its frame. A simulated task reaches the router as late as the track says at its time (a
  random offset per replication), in order, and the router reads results as far behind as it
  reads arrivals then (:class:`IntakeTrack`): a router that falls tens of ms behind hands over the
  frames it held together, and they queue together at the agents. ``client_ms`` is then only
  the part after the router.
* ``stall_s`` (optional, with an intake track; ``aicp calibrate --grid ... --stalls``): the agents' processes'
  stalls on the track's clock, read from tasks that woke late: an agent of a stalled process starts and ends
  nothing until the stall ends (:meth:`IntakeTrack.thaw`), instead of one task's wake-up at a time.

The stack's costs grow with the task rate through it (its processes share the
machine's cores), so the probe measures them at a few rates (``levels``) and a
scenario draws from the two levels around its own mean arrival rate, mixed in
proportion (clamped to the lowest and highest level measured; a trace workload counts
as the lowest). Every quantity is kept as samples (empirical distributions), drawn
independently per task with the simulator's own random streams. The model is used only when a
scenario names a calibration, so an uncalibrated scenario runs as before.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from aicp import trace
from aicp.sim.distributions import Blocks
from aicp.sim.scenario import Scenario

CALIBRATION_VERSION = 2
#: versions this reader accepts: 1 had no ``handler_ms`` and required every sample set
READABLE_VERSIONS = (1, 2)


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or of an unknown version."""


class Window(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One stretch of a recorded run: the handler times and round trips of the tasks dispatched in it (ms)."""

    handler_ms: list[float]
    agent_overhead_ms: list[float]


class Level(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The per-task samples measured at one task rate through the stack (ms)."""

    rate_per_s: Annotated[float, Meta(gt=0.0)]
    wake_ms: list[float]  # empty: no wake-up (and no timer rounding unless timer_ms says so)
    agent_overhead_ms: list[float]
    client_ms: list[float]  # empty: nothing outside the router (latency taken at the router)
    # the agents' signed handler times: when given, an agent's busy time is drawn from these
    # instead of the scenario's service distribution (timer rounding and wake-up are in them)
    handler_ms: list[float] = []
    # a run's costs second by second: when given, a task draws its handler time and round trip from the
    # window of the simulated clock (window k = [k, k+1) x window_s, cyclic), so that the slow moments of
    # the run come together as they did live instead of being spread over the whole run
    window_s: Annotated[float, Meta(ge=0.0)] = 0.0
    windows: list[Window] = []
    # the way in, as a track in time: a run's tasks' intended send times (s from the run's start, ascending) and how
    # long after each its frame reached the router (ms). When given, a simulated task reaches the router that much
    # after its intended time, read off the track at a random offset per replication (cyclic), so that a stall of
    # the load generator or the router, which holds every frame sent meanwhile and hands them over together, queues
    # them together as live; ``client_ms`` then holds only the part after the router (its end -> the generator's).
    intake_t_s: list[float] = []
    intake_ms: list[float] = []
    # the agents' processes' stalls, on the intake track's clock (needs one): per process of the run, the [start, end)
    # intervals (s, ascending, disjoint) in which it ran nothing, read from its tasks that woke late. A simulated agent
    # of process p neither starts nor ends a task inside one of p's intervals (read at the track's offset): a stall
    # delays every task the process holds at once, as live, instead of one task's wake-up at a time.
    stall_s: list[list[tuple[float, float]]] = []


class Calibration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What ``aicp calibrate`` measured: samples per task at a few task rates (ms), ascending rates."""

    v: int
    timer_ms: Annotated[float, Meta(ge=0.0)] = 1.0  # 0: the agent's sleep is not rounded
    # the agents asked their timer for the draw less this (ms): absent (0) in files of agents before the lead
    lead_ms: Annotated[float, Meta(ge=0.0)] = 0.0
    slot_ms: Annotated[float, Meta(ge=0.0)] = 0.0
    levels: list[Level]
    measured: dict[str, object] = {}  # provenance: when, where, probe settings, summaries


def load(path: str | Path) -> Calibration:
    p = Path(path)
    try:
        cal = msgspec.json.decode(p.read_bytes(), type=Calibration)
    except FileNotFoundError:
        raise CalibrationError(f"{p}: no such calibration file") from None
    except msgspec.DecodeError as exc:
        raise CalibrationError(f"{p}: not a calibration file: {exc}") from None
    if cal.v not in READABLE_VERSIONS:
        raise CalibrationError(f"{p}: calibration version {cal.v}; this reader knows {', '.join(map(str, READABLE_VERSIONS))}")
    if not cal.levels:
        raise CalibrationError(f"{p}: no levels")
    required = ("wake_ms", "agent_overhead_ms", "client_ms") if cal.v == 1 else ("agent_overhead_ms",)
    for level in cal.levels:
        for name in required:
            if not getattr(level, name):
                raise CalibrationError(f"{p}: {name} at {level.rate_per_s:g}/s holds no samples")
    if len({bool(level.handler_ms) for level in cal.levels}) > 1:
        raise CalibrationError(f"{p}: handler_ms in some levels but not all")
    for level in cal.levels:
        if level.windows and (len(cal.levels) > 1 or level.window_s <= 0.0):
            raise CalibrationError(f"{p}: windows need a single level and window_s > 0")
        if len(level.intake_t_s) != len(level.intake_ms) or (level.intake_ms and len(cal.levels) > 1):
            raise CalibrationError(f"{p}: an intake track needs a single level and as many times as lags")
        if any(b < a for a, b in itertools.pairwise(level.intake_t_s)):
            raise CalibrationError(f"{p}: intake_t_s must ascend")
        if level.stall_s and not level.intake_ms:
            raise CalibrationError(f"{p}: stall_s needs an intake track (its clock)")
        for proc in level.stall_s:
            if any(e <= s for s, e in proc) or any(b[0] < a[1] for a, b in itertools.pairwise(proc)):
                raise CalibrationError(f"{p}: each process's stall_s must be ascending, disjoint [start, end) intervals")
        for k, win in enumerate(level.windows):
            if not win.agent_overhead_ms or (level.handler_ms and not win.handler_ms):
                raise CalibrationError(f"{p}: window {k} holds no samples")
    cal.levels.sort(key=lambda lv: lv.rate_per_s)
    return cal


def bracket(levels: list[Level], rate: float) -> tuple[Level, Level, float]:
    """The two measured levels around ``rate`` and the weight of the upper one (clamped at the ends)."""
    if rate <= levels[0].rate_per_s or len(levels) == 1:
        return levels[0], levels[0], 0.0
    for low, high in itertools.pairwise(levels):
        if rate <= high.rate_per_s:
            return low, high, (rate - low.rate_per_s) / (high.rate_per_s - low.rate_per_s)
    return levels[-1], levels[-1], 0.0


def _sampler(
    low: list[float],
    high: list[float],
    w: float,
    rng: np.random.Generator,
    scale: float = 1.0,
    minus: float = 0.0,
    clip: bool = True,
) -> Callable[[], float]:
    """Draws (in seconds) from the mixture ``(1 - w) low + w high`` of samples (ms), less ``minus``, clipped at zero if ``clip``."""
    if not low and not high:
        return lambda: 0.0
    low, high = low or high, high or low
    floor = 0.0 if clip else None
    lo = np.clip(np.asarray(low, dtype=np.float64) - minus, floor, None) * (scale / 1000.0)
    hi = np.clip(np.asarray(high, dtype=np.float64) - minus, floor, None) * (scale / 1000.0)
    if w <= 0.0:
        return Blocks(lambda n: rng.choice(lo, n))
    return Blocks(lambda n: np.where(rng.random(n) < w, rng.choice(hi, n), rng.choice(lo, n)))


def timer_sleep(draw: float, lead: float, timer: float) -> float:
    """What an agent's sleep for a service draw lasts before its wake-up, in the units of the arguments: the
    draw less the lead (never negative: 0 yields once), rounded to the timer (``timer`` 0: not rounded).

    The live synthetic handler (``aicp.live.handlers.timer_sleep_s``) asks uvloop for ``max(0, d - lead)``,
    and uvloop rounds that to whole milliseconds; a test holds the two to the same numbers."""
    asked = max(0.0, draw - lead)
    return round(asked / timer) * timer if timer > 0.0 else asked


class StackModel:
    """Samplers for the calibrated costs; one per replication (its own random stream).

    O(1) per draw: each is one pop from a block of numpy draws.
    """

    def __init__(self, cal: Calibration, rng: np.random.Generator, rate_per_s: float) -> None:
        self.calibration = cal
        self.timer_s = cal.timer_ms / 1000.0
        self.lead_s = cal.lead_ms / 1000.0
        self.slot_s = cal.slot_ms / 1000.0
        low, high, w = bracket(cal.levels, rate_per_s)
        # a wake-up may be negative: a timer counts from the loop's cached millisecond, so it can end early
        self._wake = _sampler(low.wake_ms, high.wake_ms, w, rng, clip=False)
        # the slot part (result signing) is charged inside the slot, the rest half each way
        self._half_hop = _sampler(low.agent_overhead_ms, high.agent_overhead_ms, w, rng, 0.5, cal.slot_ms)
        # negative too: the load generator may send up to a timer tick before the intended time
        self._client = _sampler(low.client_ms, high.client_ms, w, rng, clip=False)
        self._handler = _sampler(low.handler_ms, high.handler_ms, w, rng) if low.handler_ms else None
        self._no_wake = not low.wake_ms and not high.wake_ms
        self.intake: IntakeTrack | None = None
        if low.intake_ms:
            # its own stream (spawned, so the other costs draw exactly as without a track)
            self.intake = IntakeTrack(low.intake_t_s, low.intake_ms, rng.spawn(1)[0], low.stall_s)
        #: the simulated clock (s); the engine sets it. Read only by windowed costs.
        self.clock: Callable[[], float] = lambda: 0.0
        if low.windows and low.window_s > 0.0:  # one level (a run's calibration): its windows
            n, width = len(low.windows), low.window_s
            halves = [_sampler(win.agent_overhead_ms, [], 0.0, rng, 0.5, cal.slot_ms) for win in low.windows]
            handlers = [_sampler(win.handler_ms, [], 0.0, rng) for win in low.windows]

            def index() -> int:
                return int(self.clock() // width) % n

            self._half_hop = lambda: halves[index()]()
            if self._handler is not None:
                self._handler = lambda: handlers[index()]()

    @property
    def replaces_service(self) -> bool:
        """True when the calibration holds the agents' handler times, which replace the scenario's service draw."""
        return self._handler is not None

    def service(self, draw: Callable[[], float]) -> Callable[[], float]:
        """An agent's busy time per task: the drawn service less the agent's lead, rounded to the timer
        (:func:`timer_sleep`), plus the wake-up.

        With handler samples (``handler_ms``), one of them instead: the scenario's draw is not used.
        """
        if self._handler is not None:
            return self._handler
        timer, wake, lead = self.timer_s, self._wake, self.lead_s
        if self._no_wake and timer <= 0.0 and lead <= 0.0:
            return draw
        if timer <= 0.0 and lead <= 0.0:
            return lambda: max(0.0, draw() + wake())

        def busy() -> float:
            return max(0.0, timer_sleep(draw(), lead, timer) + wake())

        return busy

    def hop(self, latency: Callable[[], float]) -> Callable[[], float]:
        """One router-agent hop: the scenario's network latency plus half the stack's round trip."""
        half = self._half_hop
        return lambda: latency() + half()

    def client(self) -> float:
        """Seconds outside the router added to one task's latency."""
        return self._client()


class IntakeTrack:
    """The way into the router as a track in time (:attr:`Level.intake_ms`): a task intended at ``t`` reaches the
    router ``lag(t)`` later, the lag read off the recorded track at ``t`` plus one random offset per replication
    (cyclic over the track's span), never earlier than the task before it (one connection keeps the order).

    Why a track and not independent draws: the lags come in stretches. A load generator or router descheduled for
    30 ms holds every frame sent meanwhile; they reach the router together, each lagging by what was left of the
    stall, and queue together at the agents. Drawn per task, the same lags delay tasks one by one and queue
    nobody (docs/SIMULATOR.md, "The way in"). O(log n) per task (a bisection of the track).

    The same track holds the agents' processes' stalls of the run (``stall_s``), on the same clock and read at the
    same offset, so that a moment when the machine held the router and an agent process together comes back as one
    (:meth:`thaw`). O(log s) per task for s stalls of its process.
    """

    def __init__(
        self, t_s: list[float], lag_ms: list[float], rng: np.random.Generator, stall_s: list[list[tuple[float, float]]] | None = None
    ) -> None:
        self.t = np.asarray(t_s, dtype=np.float64)
        self.lag = np.asarray(lag_ms, dtype=np.float64) / 1000.0
        self.span = float(self.t[-1] - self.t[0]) if self.t.size > 1 else 0.0
        self.offset = float(rng.random() * self.span) if self.span > 0 else 0.0
        #: the way in's usual lag (its median): what a frame takes when the router keeps up
        self.base = float(np.median(self.lag))
        #: per agent process: its stalls' starts and ends (s, the track's clock)
        self.stalls = [([s for s, _ in proc], [e for _, e in proc]) for proc in (stall_s or [])]

    def thaw(self, proc: int, t: float) -> float:
        """The first moment at or after ``t`` (s, the simulated clock) at which agent process ``proc`` runs: the end of
        the recorded stall of that process that covers ``t`` at this replication's offset, else ``t`` itself."""
        starts, ends = self.stalls[proc]
        if not starts or self.span <= 0:
            return t
        x = self.t[0] + (t + self.offset) % self.span
        k = bisect.bisect_right(starts, x) - 1
        return t + (ends[k] - x) if k >= 0 and x < ends[k] else t

    def backlog(self, t: float) -> float:
        """How far behind its usual lag the router reads at ``t`` (s, >= 0): a result the router reads then waits as long
        as an arrival does, since one event loop reads both (the slow stretches of a live run are the router's: frames
        sent on time, read tens of ms late)."""
        return max(0.0, self.lag_at(t) - self.base)

    def lag_at(self, t: float) -> float:
        """The track's lag (s) for a task intended at ``t`` (s, the simulated clock): the recorded task's intended
        at or just before ``t`` + the offset."""
        if self.span <= 0:
            return float(self.lag[0])
        x = self.t[0] + (t + self.offset) % self.span
        k = int(np.searchsorted(self.t, x, side="right")) - 1
        return float(self.lag[min(max(k, 0), self.t.size - 1)])


def agent_processes(agents: int, processes: int) -> list[int]:
    """The process each of ``agents`` agents runs in, in order, when they are spread over ``processes`` processes as
    ``aicp bench`` starts them: the first ``processes - 1`` take ``agents // processes`` each, the last the rest (a test
    holds this to ``aicp.lab.bench.live.agent_groups``)."""
    per = max(1, agents // processes)
    return [min(k // per, processes - 1) for k in range(agents)]


def shifted(items: Iterator[Any], intake: IntakeTrack, lags: deque[float], rows: bool) -> Iterator[Any]:
    """A stream's arrival times (floats, or a trace's rows with the time first when ``rows``) moved to when each task
    reaches the router, never before the one ahead of it; each task's lag (s) is appended to ``lags`` for the
    driver to take at its arrival (the latency still counts from the intended time)."""
    last = -math.inf
    for item in items:
        t = item[0] if rows else item
        at = max(t + intake.lag_at(t), last)
        last = at
        lags.append(at - t)
        yield (at, *item[1:]) if rows else at


def summary(level: Level) -> dict[str, float]:
    """Means and medians of a level's sample sets, for tables and reports."""
    out: dict[str, float] = {"rate_per_s": level.rate_per_s}
    for name in ("wake_ms", "agent_overhead_ms", "client_ms", "handler_ms"):
        arr = np.asarray(getattr(level, name), dtype=np.float64)
        out[name.replace("_ms", "_mean_ms")] = float(arr.mean()) if arr.size else 0.0
        out[name.replace("_ms", "_p50_ms")] = float(np.median(arr)) if arr.size else 0.0
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


# ----------------------------------------------------------------------------- costs from a recorded run
#: fewest back-to-back pairs for a measured slot figure; fewer: ``slot_ms`` falls back to the caller's
MIN_GAPS = 20
#: at most this many samples per set in a calibration file (a seeded subsample beyond)
MAX_SAMPLES = 5000
#: at most this many samples per window
MAX_WINDOW = 1000


@dataclass
class RunCosts:
    """The stack's per-task costs read from one recorded run (ms); see :func:`costs_from_trace`."""

    handler_ms: np.ndarray  # every completed task's signed handler time
    idle_ms: np.ndarray  # dispatch -> result minus handler time, tasks whose agent had a free slot, as they came
    overhead_ms: np.ndarray  # the same resampled to weigh each second of the run by its dispatches (_stratified)
    gap_ms: np.ndarray  # what held a busy slot beyond the handler, tasks that waited for a slot
    rate_per_s: float  # measured arrivals per second
    window_s: float  # width of the windows below
    windows: list[tuple[np.ndarray, np.ndarray]]  # per window of dispatch time from the start: (handler_ms, idle_ms)

    @staticmethod
    def concat(parts: list[RunCosts]) -> RunCosts:
        """The costs of several runs of one workload (the parts of a split run) as one: samples pooled, windows one after another."""
        if len(parts) == 1:
            return parts[0]
        n = [p.handler_ms.size for p in parts]
        return RunCosts(
            handler_ms=np.concatenate([p.handler_ms for p in parts]),
            idle_ms=np.concatenate([p.idle_ms for p in parts]),
            overhead_ms=np.concatenate([p.overhead_ms for p in parts]),
            gap_ms=np.concatenate([p.gap_ms for p in parts]),
            rate_per_s=float(np.average([p.rate_per_s for p in parts], weights=n)) if sum(n) else parts[0].rate_per_s,
            window_s=parts[0].window_s,
            windows=[w for p in parts for w in p.windows],
        )


def costs_from_trace(events: Iterable[trace.TraceEvent], skip_s: float = 0.0, window_s: float = 1.0) -> RunCosts:
    """The stack's costs in a recorded run, from the router's timestamps and the agents' signed handler times.

    What is read, per task (attempt 1, completed on the agent it was dispatched to):
    the router's dispatch time, its result time, the handler time the agent signed
    (``service_ms``), and the agent's concurrency (``agent-up``). What is **never**
    read: the time from arrival to dispatch, or from arrival to end, i.e. the latency,
    which is what the simulator then predicts. Tasks arriving in the first ``skip_s``
    seconds (warm-up) are left out.

    * ``handler_ms``: the signed handler time of every such task;
    * ``idle_ms`` (tasks whose agent had a free slot at dispatch, so no wait is
      inside): result time minus dispatch time minus handler time. The frame hops
      both ways, the agent's verify and decode, its result signing, the router's verify;
    * ``overhead_ms``: ``idle_ms`` resampled per ``window_s`` of the run in proportion to
      the tasks dispatched in it (:func:`_stratified`): agents are idle more often when
      the machine is quiet, so the raw samples under-weigh its slow moments;
    * ``gap_ms`` (tasks dispatched while every slot of their agent was taken, at least
      the 90th percentile of ``idle_ms`` before the result that freed it, so that the task
      was at the agent by then): result time minus the result time of the task whose
      slot it took (the earliest outstanding one, the agent's semaphore being first come
      first served) minus its handler time: signing and sending the previous result and
      handing the slot over.

    O(n log c) for n tasks and concurrency c; memory linear in n.
    """
    conc: dict[str, int] = {}
    arrive: dict[str, float] = {}
    first: dict[str, tuple[float, str]] = {}
    reply: dict[str, tuple[float, float, str]] = {}
    t0: float | None = None
    for ev in events:
        kind = type(ev)
        if kind is trace.Arrive:
            arrive[ev.task] = ev.t  # type: ignore[attr-defined]
            if t0 is None:
                t0 = ev.t
        elif kind is trace.Dispatch:
            if ev.attempt == 1:  # type: ignore[attr-defined]
                first[ev.task] = (ev.t, ev.agent)  # type: ignore[attr-defined]
        elif kind is trace.Reply:
            if ev.ok and ev.service_ms is not None:  # type: ignore[attr-defined]
                reply[ev.task] = (ev.t, ev.service_ms, ev.agent)  # type: ignore[attr-defined]
        elif kind is trace.AgentUp:
            conc[ev.agent] = max(1, ev.concurrency)  # type: ignore[attr-defined]
    start = (t0 if t0 is not None else 0.0) + skip_s
    handler: list[float] = []
    idle: list[tuple[float, float]] = []  # (dispatch time, round trip)
    waits: list[tuple[float, float]] = []  # (how long before the freeing result the task was dispatched, gap)
    dispatched: list[float] = []  # dispatch times of every measured task
    outstanding: dict[str, list[float]] = {}  # agent -> result times of tasks holding or awaiting a slot (a heap)
    for task in sorted(first, key=lambda k: first[k][0]):
        t_d, agent = first[task]
        got = reply.get(task)
        if got is None or got[2] != agent:
            continue  # failed, lost or retried elsewhere: its slot time is unknown
        heap = outstanding.setdefault(agent, [])
        while heap and heap[0] <= t_d:
            heapq.heappop(heap)
        measured = arrive.get(task, t_d) >= start
        t_r, service, _ = got
        if len(heap) < conc.get(agent, 1):
            if measured:
                idle.append((t_d, (t_r - t_d) * 1000.0 - service))
        else:
            t_prev = heapq.heappop(heap)  # the slot this task waited for
            if measured:
                waits.append(((t_prev - t_d) * 1000.0, (t_r - t_prev) * 1000.0 - service))
        heapq.heappush(heap, t_r)
        if measured:
            handler.append(service)
            dispatched.append(t_d)
    span = (max(arrive.values()) - start) if arrive else 0.0
    n_measured = sum(1 for t in arrive.values() if t >= start)
    overhead = _stratified(idle, dispatched, window_s, start)
    windows = _windows(idle, [(t, h) for t, h in zip(dispatched, handler, strict=True)], window_s, start)
    # a wait counts only if the task was dispatched a whole (90th percentile) round trip before the result that
    # freed its slot: then it was at the agent when the slot freed, and the gap holds no part of its own hop
    lead = float(np.percentile([o for _, o in idle], 90)) if idle else 0.0
    gaps = [g for before, g in waits if before >= lead]
    return RunCosts(
        handler_ms=np.array(handler),
        idle_ms=np.array([o for _, o in idle]),
        overhead_ms=overhead,
        gap_ms=np.array(gaps),
        rate_per_s=n_measured / span if span > 0 else 1.0,
        window_s=window_s,
        windows=windows,
    )


def _by_window(pairs: list[tuple[float, float]], window_s: float, t0: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for t, v in pairs:
        out.setdefault(max(0, int((t - t0) // window_s)), []).append(v)
    return out


def _nearest(have: dict[int, list[float]], w: int) -> list[float]:
    keys = np.array(sorted(have))
    return have[int(keys[np.argmin(np.abs(keys - w))])]


def _windows(
    idle: list[tuple[float, float]], handled: list[tuple[float, float]], window_s: float, t0: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per window of dispatch time from ``t0``: the handler times and idle round trips of its tasks.

    A window without a sample of one kind borrows the nearest window that has one.
    """
    if not idle or not handled:
        return []
    rts, hs = _by_window(idle, window_s, t0), _by_window(handled, window_s, t0)
    last = max(max(rts), max(hs))
    return [
        (np.asarray(hs.get(w) or _nearest(hs, w)), np.asarray(rts.get(w) or _nearest(rts, w))) for w in range(last + 1)
    ]


def _stratified(idle: list[tuple[float, float]], dispatched: list[float], window_s: float, t0: float) -> np.ndarray:
    """Round trips of idle dispatches, resampled so each second of the run weighs as many tasks as it dispatched.

    An agent is idle more often when the machine is quiet, when hops are quick too: taken
    as they come, the idle dispatches would under-weigh the slow seconds. A second without
    an idle dispatch borrows the nearest second that has one. Seeded: the same trace, the same samples.
    """
    if not idle:
        return np.array([])
    by_window = _by_window(idle, window_s, t0)
    counts: dict[int, int] = {}
    for t in dispatched:
        w = max(0, int((t - t0) // window_s))
        counts[w] = counts.get(w, 0) + 1
    rng = np.random.default_rng(0)
    out = [rng.choice(np.asarray(by_window.get(w) or _nearest(by_window, w)), n) for w, n in sorted(counts.items())]
    return np.concatenate(out)


def thin(values: np.ndarray, most: int = MAX_SAMPLES) -> list[float]:
    """At most ``most`` of ``values`` (a seeded subsample), rounded to 0.1 us, as a list."""
    if values.size > most:
        values = np.random.default_rng(0).choice(values, most, replace=False)
    return [round(float(v), 4) for v in values]


def from_run(
    costs: RunCosts,
    *,
    client_ms: np.ndarray | None = None,
    handler: bool = True,
    fallback_slot_ms: float = 0.0,
    measured: dict[str, object] | None = None,
    windows: bool = False,
) -> Calibration:
    """A one-level calibration from a recorded run's costs (:func:`costs_from_trace`).

    ``handler``: the agents' busy time is drawn from the run's handler times (else the
    scenario's service is used as it is, e.g. a replay whose tasks keep their recorded
    times). ``client_ms``: the time outside the router per task, if measured (else the
    latency is taken at the router). ``slot_ms`` is the mean of the run's gaps, or
    ``fallback_slot_ms`` with fewer than MIN_GAPS of them. No timer rounding, no wake-up:
    the handler times hold both. ``windows``: keep the costs second by second (the
    run's windows), so that the simulated clock draws from the same moment of the run.
    Off by default: on a loaded 2-core machine it moved the p50 and p99 as much one way
    as the other (docs/SIMULATOR.md).
    """
    if costs.overhead_ms.size == 0:
        raise CalibrationError("the run has no completed task dispatched to an agent with a free slot")
    slot = float(np.clip(costs.gap_ms.mean(), 0.0, None)) if costs.gap_ms.size >= MIN_GAPS else fallback_slot_ms
    level = Level(
        rate_per_s=max(costs.rate_per_s, 1e-6),
        wake_ms=[],
        agent_overhead_ms=thin(costs.overhead_ms),
        client_ms=thin(client_ms) if client_ms is not None else [],
        handler_ms=thin(costs.handler_ms) if handler else [],
        window_s=costs.window_s if windows and costs.windows else 0.0,
        windows=[
            Window(handler_ms=thin(h, MAX_WINDOW) if handler else [], agent_overhead_ms=thin(o, MAX_WINDOW))
            for h, o in (costs.windows if windows else [])
        ],
    )
    return Calibration(v=CALIBRATION_VERSION, timer_ms=0.0, slot_ms=round(slot, 4), levels=[level], measured=measured or {})


def write(cal: Calibration, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(cal), indent=1))


def model(scenario: Scenario, rng: np.random.Generator) -> StackModel:
    """The stack model of a scenario that names a calibration file."""
    from aicp.sim.workload import expected_count

    assert scenario.calibration is not None
    cal = load(scenario.resolve(scenario.calibration.file))
    if cal.levels[0].handler_ms and (len(scenario.agents) != 1 or scenario.agents[0].speed != 1.0):
        raise CalibrationError(
            f"{scenario.calibration.file}: handler times measured in one run stand for one agent group of speed 1; "
            f"the scenario has {len(scenario.agents)} group(s)"
        )
    rate = sum(expected_count(w.arrival, scenario.duration_s) for w in scenario.workload) / scenario.duration_s
    return StackModel(cal, rng, rate)
