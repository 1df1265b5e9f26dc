"""The sans-I/O core's CPU for one task, local against cross-router, step by step, with warm or cold caches.

``python -m aicp.lab.bench.hop_core --tasks 2000`` wires two routers' cores in one
process (``RouterProtocol`` + ``ClusterNode``, no I/O): router ``ra`` holds one agent,
``rb`` none, and a controller at each. A *local* task is submitted at ``ra`` (task in,
result in: two steps); a *cross-router* one at ``rb`` and goes to ``ra`` (four steps: the
owner takes the task and forwards it, ``ra`` takes it, ``ra`` takes the agent's result and
sends it back, the owner takes the outcome). Each step is timed alone in thread CPU time,
with the cyclic garbage collector off.

``--cold`` overwrites a buffer larger than the CPU caches before each step, as a router's
wake-up finds them after the other processes of a loaded (or idle, sleeping) machine
ran: each step then pays for fetching the interpreter's and the core's code and data
again. That is what a live router pays per frame on top of the core's warm cost
(docs/CLUSTER.md): the cross-only steps, cheap when warm, cost several times more cold.

``--driver`` runs the live driver's code too (``DriverHop``): each router is an
``AICPWebSocketServer`` (not started) with its ``NatsCluster``, and a step is the server's
``_apply`` of the core's outputs, the NATS link's parse of a ``MSG`` (``_Wire.data_received``)
and its framing of a ``PUB``, up to the write: what a live router runs between a frame
arriving and its answer leaving, less the sockets and the WebSocket framing (a peer's link
here keeps what it is sent). The bytes a router writes to NATS are turned into the other
router's ``MSG`` between steps, untimed.

Figures are of this process on this machine; compare warm and cold, or local and cross,
from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from aicp.cluster import ClusterConfig, ClusterNode, Publish
from aicp.messages import decode_body, decode_frame, payload
from aicp.peer import PeerSession
from aicp.protocol import Forward, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

METHOD = "bench.synthetic"
NOW = 1_000_000.0
#: bytes overwritten before a step with ``--cold`` (default): well past the per-core caches (L2 is 1 MiB here), a
#: quarter of a 32 MiB L3 that the host's other guests share too
EVICT_BYTES = 8 << 20


def _router(name: str) -> tuple[RouterProtocol, ClusterNode]:
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(max_tasks=10**6), "least_loaded", random.Random(0)),
                           ProtocolConfig(router_id=name, rate_per_s=1e9, rate_burst=1e9))
    return proto, ClusterNode(proto, ClusterConfig())


def _connect(proto: RouterProtocol, conn: int, session: PeerSession, now: float) -> None:
    outs = proto.connection_made(conn, now)
    session.receive(outs[0].data, now)  # type: ignore[union-attr]  # the challenge is a Send
    for out in proto.frame_received(conn, session.register_frame(now), now):
        if isinstance(out, Send):
            session.receive(out.data, now)


class Hop:
    """Two routers' cores in one process, an agent at ``ra`` (conn 1), controllers at ``ra`` (conn 2) and ``rb`` (conn 3)."""

    def __init__(self, cold: bool = False, evict_bytes: int = EVICT_BYTES) -> None:
        self.pa, self.na = _router("ra")
        self.pb, self.nb = _router("rb")
        self.agent = PeerSession(Identity.generate(), "agent-1", "agent", [METHOD], 100_000)
        self.ctl_a = PeerSession(Identity.generate(), "ctl-a", "controller")
        self.ctl_b = PeerSession(Identity.generate(), "ctl-b", "controller")
        _connect(self.pa, 1, self.agent, NOW)
        _connect(self.pa, 2, self.ctl_a, NOW)
        _connect(self.pb, 3, self.ctl_b, NOW)
        for src, dst in ((self.na, self.nb), (self.nb, self.na)):
            for out in src.start(NOW):
                if isinstance(out, Publish):
                    dst.summary_received(out.data, NOW)
        if not self.pb.router.remote_ids:
            raise RuntimeError("rb does not see ra's agents")
        # Overwritten in place through a memoryview (a bytearray's slice assignment allocates a new buffer: page faults).
        self._junk = memoryview(bytearray(evict_bytes)) if cold else None
        self._fill = bytes(range(256)) * (evict_bytes // 256) if cold else b""

    def _evict(self) -> None:
        if self._junk is not None:
            self._junk[:] = self._fill

    def _frames(self, ctl: PeerSession, n: int, now: float) -> list[tuple[bytes, bytes]]:
        """``n`` (task frame, the agent's result frame) pairs, made before timing."""
        out = []
        body = payload({"n": 1, "text": "x" * 40})
        for _ in range(n):
            _, task = ctl.task_frame(METHOD, body, now)
            out.append((task, self.agent.result_frame(decode_body(decode_frame(task).body), payload({"ok": 1}), now)))  # type: ignore[arg-type]
        return out

    def local(self, n: int, now: float) -> dict[str, float]:
        """µs per task of each step of ``n`` tasks submitted at ``ra``."""
        frames = self._frames(self.ctl_a, n, now)
        acc = [0, 0]
        pa, evict, clock = self.pa, self._evict, time.thread_time_ns
        for task, result in frames:
            evict()
            t0 = clock()
            outs = pa.frame_received(2, task, now)
            acc[0] += clock() - t0
            assert outs and outs[0].conn == 1, outs  # to the agent
            evict()
            t0 = clock()
            outs = pa.frame_received(1, result, now)
            acc[1] += clock() - t0
            assert outs and outs[0].conn == 2, outs  # to the controller
        return {"task in": acc[0] / n / 1e3, "result in": acc[1] / n / 1e3}

    def cross(self, n: int, now: float) -> dict[str, float]:
        """µs per task of each step of ``n`` tasks submitted at ``rb`` and run by ``ra``'s agent."""
        frames = self._frames(self.ctl_b, n, now)
        acc = [0, 0, 0, 0]
        pa, pb, na, nb, evict, clock = self.pa, self.pb, self.na, self.nb, self._evict, time.thread_time_ns
        for task, result in frames:
            evict()
            t0 = clock()
            pb.frame_received(3, task, now)
            fwd = nb.flush()
            acc[0] += clock() - t0
            f = fwd[0]
            assert len(fwd) == 1 and isinstance(f, Forward), fwd
            evict()
            t0 = clock()
            outs = na.task_received("rb", f.data, f.timeout_s, now, f.key, f.method, f.fingerprint)
            acc[1] += clock() - t0
            assert outs and outs[0].conn == 1, outs  # type: ignore[union-attr]  # to the agent
            evict()
            t0 = clock()
            pa.frame_received(1, result, now)
            back = na.flush()
            acc[2] += clock() - t0
            o = back[0]
            assert len(back) == 1 and isinstance(o, Forward), back
            evict()
            t0 = clock()
            outs = nb.outcome_received("ra", o.key, o.data, now, o.ok)
            acc[3] += clock() - t0
            assert outs and outs[0].conn == 3, outs  # type: ignore[union-attr]  # to the controller
        return {"owner: task in": acc[0] / n / 1e3, "remote: forwarded task in": acc[1] / n / 1e3,
                "remote: result in": acc[2] / n / 1e3, "owner: outcome in": acc[3] / n / 1e3}


class _PeerLink:
    """A WebSocket peer's link in ``DriverHop``: keeps what the server sends it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        pass


class _NatsSocket:
    """The NATS connection's transport in ``DriverHop``: keeps what the link writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class _Soon:
    """The event loop's ``call_soon`` in ``DriverHop``: run at the end of each step, as the loop runs them at the end of an iteration."""

    def __init__(self) -> None:
        self.ready: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_soon(self, cb: Callable[..., object], *args: object) -> None:
        self.ready.append((cb, args))

    def run(self) -> None:
        while self.ready:
            ready, self.ready = self.ready, []
            for cb, args in ready:
                cb(*args)


def _as_msg(written: list[bytes], subject: bytes, sid: int) -> bytes:
    """What nats-server delivers for the one ``PUB`` in ``written`` (emptied): the same payload as a ``MSG``."""
    data = b"".join(written)
    written.clear()
    eol = data.index(b"\r\n")
    verb, subj, size = data[:eol].split(b" ")
    assert verb == b"PUB" and subj == subject and len(data) == eol + 4 + int(size), data[:eol]
    return b"MSG %s %d %s\r\n%s" % (subj, sid, size, data[eol + 2:])


class DriverHop(Hop):
    """``Hop`` through the live driver's code: two ``AICPWebSocketServer`` + ``NatsCluster`` (never started), NATS in memory.

    Must be made inside a running event loop (the NATS link's futures); nothing is awaited. Shares only the
    frames and the eviction with ``Hop``; its routers are the servers' cores.
    """

    def __init__(self, cold: bool = False, evict_bytes: int = EVICT_BYTES) -> None:
        from aicp.live import nats_link
        from aicp.live.cluster import NatsCluster
        from aicp.live.server import AICPWebSocketServer

        self.soon = _Soon()
        now = time.time()
        self.servers, self.clusters, self.sockets, self.wires = [], [], [], []
        for name in ("ra", "rb"):
            server = AICPWebSocketServer(strategy="least_loaded", router_config=RouterConfig(max_tasks=10**6),
                                         protocol_config=ProtocolConfig(router_id=name, rate_per_s=1e9, rate_burst=1e9))
            cluster = NatsCluster(server, "nats://127.0.0.1:1")
            server.cluster_flush = cluster._flush  # as NatsCluster.start does
            sock = _NatsSocket()
            wire = nats_link._Wire(cluster.link)
            wire.transport = sock  # type: ignore[assignment]  # only write() and get_write_buffer_size() are used
            cluster.link._wire, cluster.link._loop = wire, self.soon  # type: ignore[assignment]
            self.servers.append(server)
            self.clusters.append(cluster)
            self.sockets.append(sock)
            self.wires.append(wire)
        self.sa, self.sb = self.servers
        self.agent = PeerSession(Identity.generate(), "agent-1", "agent", [METHOD], 100_000)
        self.ctl_a = PeerSession(Identity.generate(), "ctl-a", "controller")
        self.ctl_b = PeerSession(Identity.generate(), "ctl-b", "controller")
        self.links: dict[int, _PeerLink] = {}
        for server, conn, session in ((self.sa, 1, self.agent), (self.sa, 2, self.ctl_a), (self.sb, 3, self.ctl_b)):
            _connect(server.proto, conn, session, now)
            self.links[conn] = server._links[conn] = _PeerLink()  # type: ignore[assignment]
        summary = self.clusters[0]._summary_subject
        for i, cluster in enumerate(self.clusters):
            cluster._apply(cluster.node.start(now))
            self.soon.run()
            self.wires[1 - i].data_received(_as_msg(self.sockets[i].written, summary, 1))
        if not self.sb.proto.router.remote_ids:
            raise RuntimeError("rb does not see ra's agents")
        self.to_a, self.to_b = self.clusters[0].subject_of("ra").encode(), self.clusters[1].subject_of("rb").encode()
        self._junk = memoryview(bytearray(evict_bytes)) if cold else None
        self._fill = bytes(range(256)) * (evict_bytes // 256) if cold else b""

    def local(self, n: int, now: float) -> dict[str, float]:
        frames = self._frames(self.ctl_a, n, now)
        acc = [0, 0]
        sa, soon, evict, clock = self.sa, self.soon, self._evict, time.thread_time_ns
        to_agent, to_ctl = self.links[1].sent, self.links[2].sent
        for task, result in frames:
            evict()
            t0 = clock()
            sa._apply(sa.proto.frame_received(2, task, now))
            soon.run()
            acc[0] += clock() - t0
            assert to_agent.pop() == task and not self.sockets[0].written
            evict()
            t0 = clock()
            sa._apply(sa.proto.frame_received(1, result, now))
            soon.run()
            acc[1] += clock() - t0
            assert to_ctl.pop() == result
        return {"task in": acc[0] / n / 1e3, "result in": acc[1] / n / 1e3}

    def cross(self, n: int, now: float) -> dict[str, float]:
        frames = self._frames(self.ctl_b, n, now)
        acc = [0, 0, 0, 0]
        sa, sb, (wa, wb), (na, nb), soon, evict, clock = self.sa, self.sb, self.wires, self.sockets, self.soon, self._evict, time.thread_time_ns
        to_agent, to_ctl = self.links[1].sent, self.links[3].sent
        for task, result in frames:
            evict()
            t0 = clock()
            sb._apply(sb.proto.frame_received(3, task, now))
            soon.run()
            acc[0] += clock() - t0
            msg = _as_msg(nb.written, self.to_a, 2)
            evict()
            t0 = clock()
            wa.data_received(msg)
            soon.run()
            acc[1] += clock() - t0
            assert to_agent.pop() == task
            evict()
            t0 = clock()
            sa._apply(sa.proto.frame_received(1, result, now))
            soon.run()
            acc[2] += clock() - t0
            msg = _as_msg(na.written, self.to_b, 2)
            evict()
            t0 = clock()
            wb.data_received(msg)
            soon.run()
            acc[3] += clock() - t0
            assert to_ctl.pop() == result
        return {"owner: task in": acc[0] / n / 1e3, "remote: forwarded task in": acc[1] / n / 1e3,
                "remote: result in": acc[2] / n / 1e3, "owner: outcome in": acc[3] / n / 1e3}


def measure(tasks: int = 2000, rounds: int = 3, cold: bool = False, evict_bytes: int = EVICT_BYTES, driver: bool = False) -> dict[str, Any]:
    """Local and cross-router rounds, alternating; each round's per-step µs and their totals; medians of the totals.

    ``driver``: through the live driver's code (``DriverHop``, run in an event loop of its own).
    """
    if driver:
        async def run() -> dict[str, Any]:
            return _measure(DriverHop(cold, evict_bytes), tasks, rounds, time.time(), cold)
        return asyncio.run(run())
    return _measure(Hop(cold, evict_bytes), tasks, rounds, NOW, cold)


def _measure(hop: Hop, tasks: int, rounds: int, start: float, cold: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            now = start + i
            local, cross = hop.local(tasks, now), hop.cross(tasks, now)
            rows.append({"local": local, "cross": cross, "local_us": sum(local.values()), "cross_us": sum(cross.values())})
            gc.collect()
    finally:
        gc.enable()
    local_us = statistics.median(r["local_us"] for r in rows)
    cross_us = statistics.median(r["cross_us"] for r in rows)
    return {"tasks": tasks, "cold": cold, "rounds": rows, "local_us": local_us, "cross_us": cross_us, "ratio": cross_us / local_us}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aicp.lab.bench.hop_core", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round of each kind (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="evict the CPU caches before each step (a wake-up on a busy or sleeping machine)")
    parser.add_argument("--evict-mb", type=float, default=EVICT_BYTES / 2**20, help="with --cold: MiB overwritten before each step (default 8)")
    parser.add_argument("--driver", action="store_true", help="through the live driver's code too: server, NATS link parse and publish (no sockets)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    res = measure(args.tasks, args.rounds, args.cold, int(args.evict_mb * 2**20) // 256 * 256, args.driver)
    if args.json:
        print(json.dumps(res))
        return 0
    for i, r in enumerate(res["rounds"]):
        for kind in ("local", "cross"):
            steps = ", ".join(f"{k} {v:.1f}" for k, v in r[kind].items())
            print(f"round {i + 1} {kind:5}: {r[kind + '_us']:7.1f} µs/task ({steps})")
    print(f"{'live driver code, ' if args.driver else ''}{f'cold caches ({args.evict_mb:g} MiB evicted per step)' if args.cold else 'warm caches'}, medians: local {res['local_us']:.1f} µs/task, cross-router {res['cross_us']:.1f} "
          f"(both routers): {res['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
