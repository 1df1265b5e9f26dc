"""Plain HTTP on the router's WebSocket port: ``/healthz``, ``/metrics`` and ``/agents``.

These read the router's state and never change it. Formats are in docs/PROTOCOL.md.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from aicp.live.prometheus import CONTENT_TYPE

if TYPE_CHECKING:
    from aicp.live.server import AICPWebSocketServer

PATHS = ("/healthz", "/metrics", "/agents")


def healthz(server: AICPWebSocketServer) -> dict[str, object]:
    """Liveness and a count of agents by status."""
    return {
        "status": "draining" if server.stopping else "ok",
        "connections": server.open_connections,
        "agents": server.router.agents_by_status(),  # local agents only (not other routers' capacity in cluster mode)
        "tasks_in_flight": server.proto.pending_tasks(),
        **({"cluster": server.cluster_info()} if server.cluster_info is not None else {}),
    }


def agents(server: AICPWebSocketServer) -> dict[str, object]:
    """Every known agent with the key its id is bound to, its statistics, and whether it is connected now."""
    return server.proto.agents_document()


def answer(server: AICPWebSocketServer, connection: ServerConnection, path: str) -> Response:
    """The response to a plain GET of ``path`` (query string already removed)."""
    if path == "/healthz":
        return respond(connection, 200, json.dumps(healthz(server)).encode(), "application/json")
    if path == "/metrics":
        return respond(connection, 200, server.metrics.render(), CONTENT_TYPE)
    if path == "/agents":
        return respond(connection, 200, json.dumps(agents(server)).encode(), "application/json")
    return connection.respond(404, "not found: try /healthz, /metrics, /agents, or a WebSocket upgrade\n")


def respond(connection: ServerConnection, status: int, body: bytes, content_type: str) -> Response:
    response = connection.respond(status, "")
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    response.headers["Cache-Control"] = "no-store"
    response.body = body
    return response


