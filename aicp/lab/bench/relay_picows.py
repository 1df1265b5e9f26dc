"""The baseline relay on picows instead of websockets: the same work per frame, another WebSocket library.

``aicp bench --baseline --relay-transports websockets,picows`` runs both relays
under the same load in the same run, so the difference is what the WebSocket
implementation costs on the hot path (picows parses and frames in Cython; each
``send`` is one transport write). Like ``relay.py`` it verifies every frame's
signature and decodes its body, and nothing else. Text frames only, unfragmented
(what AICP peers send).

Run as ``python -m aicp.lab.bench.relay_picows --port P``.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from aicp import errors
from aicp.live.loop import run_async
from aicp.messages import PROTOCOL_VERSION, Challenge, Register, RegisterAck, Result, Task, decode_body, decode_frame, seal
from aicp.signing import Identity, check_public_key, decode_public_key, decode_signature, verify


class _Relay:
    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.agents: list[WSTransport] = []
        self.peers: dict[str, WSTransport] = {}
        self._turn = itertools.count()
        self._ids = itertools.count()

    def seal(self, body: Challenge | RegisterAck) -> bytes:
        return seal(self.identity, "relay", body)


class _Conn(WSListener):  # type: ignore[misc]
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.nonce = secrets.token_urlsafe(24)
        self.peer: str | None = None
        self.key = b""
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        r = self.relay
        transport.send(WSMsgType.TEXT, r.seal(Challenge(v=PROTOCOL_VERSION, id=f"x{next(r._ids)}", sender="relay", ts=time.time(), nonce=self.nonce,
                                                        heartbeat_s=30.0, lease_s=90.0, window_s=60.0)))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        r = self.relay
        if self.peer is not None and r.peers.get(self.peer) is transport:
            del r.peers[self.peer]
        if transport in r.agents:
            r.agents.remove(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        try:
            self._frame(transport, data)
        except errors.ProtocolError:
            if self.peer is None:
                transport.disconnect()

    def _frame(self, transport: WSTransport, data: bytes) -> None:
        r = self.relay
        frame = decode_frame(data)
        if self.peer is None:
            key = decode_public_key(frame.key)
            check_public_key(key)
            verify(key, frame.body, decode_signature(frame.sig))
            reg = decode_body(frame.body)
            if not isinstance(reg, Register) or reg.nonce != self.nonce:
                transport.disconnect()
                return
            self.peer, self.key = reg.sender, key
            r.peers[reg.sender] = transport
            if reg.role == "agent":
                r.agents.append(transport)
            transport.send(WSMsgType.TEXT, r.seal(RegisterAck(v=PROTOCOL_VERSION, id=f"x{next(r._ids)}", sender="relay", ts=time.time(), ref=reg.id,
                                                             peer=reg.sender, role=reg.role, heartbeat_s=30.0, lease_s=90.0)))
            return
        verify(self.key, frame.body, decode_signature(frame.sig))  # the same per-hop check as the router
        body = decode_body(frame.body)
        if isinstance(body, Task) and r.agents:
            r.agents[next(r._turn) % len(r.agents)].send(WSMsgType.TEXT, data)
        elif isinstance(body, Result):
            requester = r.peers.get(body.requester)
            if requester is not None:
                requester.send(WSMsgType.TEXT, data)


async def main_async(host: str, port: int) -> None:
    relay = _Relay()

    def listener(request: WSUpgradeRequest) -> _Conn:
        return _Conn(relay)

    server = await ws_create_server(listener, host, port, max_frame_size=1 << 20, enable_auto_pong=True)
    print(f"AICP baseline relay (picows) listening on ws://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8767)
    args = p.parse_args()
    try:
        run_async(main_async(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
