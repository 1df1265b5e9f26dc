"""The baseline relay for ``aicp bench --baseline``: the same libraries and signature work, nothing else.

It speaks enough of the protocol for unmodified agents and load generators
(challenge, register, ack) and, like the router, verifies every frame's signature
and decodes its body. It has no registry, no strategy, no retries, no leases, no
replay cache and no metrics: tasks go to the agents in turn, results go back to
the requester by id. The router's throughput divided by this relay's is the cost
of everything the router adds.

Run as ``python -m aicp.lab.bench.relay --port P``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import secrets
import time

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from aicp.live.loop import run_async
from aicp.messages import PROTOCOL_VERSION, Challenge, Register, RegisterAck, Result, Task, decode_body, decode_frame, seal
from aicp.signing import Identity, check_public_key, decode_public_key, decode_signature, verify


class Relay:
    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.agents: list[ServerConnection] = []
        self.peers: dict[str, ServerConnection] = {}
        self.keys: dict[str, bytes] = {}
        self._turn = itertools.count()
        self._ids = itertools.count()

    def _seal(self, body: Challenge | RegisterAck) -> bytes:
        return seal(self.identity, "relay", body)

    async def handle(self, ws: ServerConnection) -> None:
        nonce = secrets.token_urlsafe(24)
        await ws.send(self._seal(Challenge(v=PROTOCOL_VERSION, id=f"x{next(self._ids)}", sender="relay", ts=time.time(), nonce=nonce,
                                           heartbeat_s=30.0, lease_s=90.0, window_s=60.0)), text=True)
        peer: str | None = None
        try:
            first = decode_frame(await ws.recv(decode=False))
            key = decode_public_key(first.key)
            check_public_key(key)
            verify(key, first.body, decode_signature(first.sig))
            reg = decode_body(first.body)
            if not isinstance(reg, Register) or reg.nonce != nonce:
                return
            peer = reg.sender
            self.peers[peer] = ws
            self.keys[peer] = key
            if reg.role == "agent":
                self.agents.append(ws)
            await ws.send(self._seal(RegisterAck(v=PROTOCOL_VERSION, id=f"x{next(self._ids)}", sender="relay", ts=time.time(), ref=reg.id,
                                                 peer=peer, role=reg.role, heartbeat_s=30.0, lease_s=90.0)), text=True)
            while True:
                data = await ws.recv(decode=False)
                frame = decode_frame(data)
                verify(key, frame.body, decode_signature(frame.sig))  # the same per-hop check as the router
                body = decode_body(frame.body)
                if isinstance(body, Task) and self.agents:
                    target = self.agents[next(self._turn) % len(self.agents)]
                    with contextlib.suppress(ConnectionClosed):
                        await target.send(data, text=True)
                elif isinstance(body, Result):
                    requester = self.peers.get(body.requester)
                    if requester is not None:
                        with contextlib.suppress(ConnectionClosed):
                            await requester.send(data, text=True)
        except (ConnectionClosed, Exception):
            pass
        finally:
            if peer is not None and self.peers.get(peer) is ws:
                del self.peers[peer]
            if ws in self.agents:
                self.agents.remove(ws)


async def main_async(host: str, port: int) -> None:
    relay = Relay()
    async with serve(relay.handle, host, port, compression=None, max_size=2**20, ping_interval=None, max_queue=None) as server:
        print(f"AICP baseline relay listening on ws://{host}:{port}", flush=True)
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8766)
    args = p.parse_args()
    try:
        run_async(main_async(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
