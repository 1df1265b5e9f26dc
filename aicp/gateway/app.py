"""The REST face: ``POST /tasks``, ``GET /tasks/{id}``, its events, and the live registry.

Request bodies are read and decoded with msgspec (not pydantic), so every
refusal is a problem with its own status and code. ``POST /tasks`` itself is
answered by ``aicp.gateway.submit`` before FastAPI's stack; its route here describes
it in the OpenAPI document, which has an example for every endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse

import aicp
from aicp import errors
from aicp.gateway import problems
from aicp.gateway.auth import Principal
from aicp.gateway.core import Gateway, GatewayConfig
from aicp.gateway.problems import problem
from aicp.gateway.submit import GatewayApp, TaskSubmission
from aicp.gateway.tasks import GatewayTask

_encoder: Final = msgspec.json.Encoder()

# ---------------------------------------------------------------------------- OpenAPI examples
_SIG = "kqT2...88 base64 characters...Aw=="
TASK_EXAMPLE: Final = {
    "id": "idem:3a6b1c2d:order-42",
    "method": "text.classify",
    "state": "completed",
    "created": 1764316800.123,
    "result": {"label": "positive", "scores": {"positive": 0.91, "negative": 0.04, "neutral": 0.05}},
    "agent_id": "agent-7",
    "agent_key": "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w",
    "signature": _SIG,
    "signed_bytes": "QUlDUC12MSBzaWduZWQgYm9keQB7InR5cGUiOiJyZXN1bHQiLC4uLn0=",
}
_REQUEST_BODY: Final = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["method"],
                "additionalProperties": False,
                "properties": {
                    "method": {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$", "maxLength": 128, "description": "the capability to run"},
                    "payload": {"description": "any JSON value, given to the agent as is"},
                    "timeout_ms": {"type": "number", "exclusiveMinimum": 0, "description": "overall deadline (default 30000)"},
                },
            },
            "example": {"method": "text.classify", "payload": {"text": "great service"}, "timeout_ms": 5000},
        }
    },
}
_PARAMS: Final = [
    {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"}, "example": "respond-async", "description": "respond-async: answer 202 at once with Location"},
    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 96}, "example": "order-42", "description": "the same key and body return the same single outcome"},
]


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(obj), status_code=status, media_type="application/json", headers=headers)


def _task_response(task: GatewayTask, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return _json(task.view(), status, headers)


def create_app(config: GatewayConfig, gateway: Gateway | None = None) -> FastAPI:
    gw = gateway or Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = GatewayApp(
        **_no_telemetry(),
        title="AICP gateway",
        version=aicp.__version__ if hasattr(aicp, "__version__") else "0",
        description="HTTP control plane for an AICP router: submit signed tasks, get results you can verify yourself. "
        "Errors are RFC 9457 problem details carrying the AICP error code. Every capability is also an A2A agent at /a2a/{method}.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    submission = TaskSubmission(gw)

    def authenticate(request: Request) -> Principal | Response:
        principal = gw.keys.principal(request.headers.get("authorization"))
        if principal is None:
            return problem(401, problems.UNAUTHORIZED, "send Authorization: Bearer <API key>", headers={"WWW-Authenticate": 'Bearer realm="aicp"'})
        return principal

    # ------------------------------------------------------------------ errors from the framework
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = problems.NOT_FOUND if exc.status_code == 404 else errors.INVALID_MESSAGE
        return problem(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return problem(422, errors.INVALID_MESSAGE, str(exc.errors()[:3]))

    # ------------------------------------------------------------------ tasks
    @app.post(
        "/tasks",
        summary="Submit a task",
        description="Signs the task with the gateway's controller key and sends it to the router. Waits for the outcome "
        "unless `Prefer: respond-async` is sent (then 202 with `Location`). The result carries the agent's id, key, "
        "signature and the signed bytes, so the caller can verify it without trusting the gateway.",
        openapi_extra={"requestBody": _REQUEST_BODY, "parameters": _PARAMS},
        responses={
            200: {"description": "the verified result", "content": {"application/json": {"example": TASK_EXAMPLE}}},
            202: {"description": "accepted (Prefer: respond-async)", "content": {"application/json": {"example": {"id": "5f1e2d3c4b5a-7", "method": "text.classify", "state": "submitted", "created": 1764316800.1}}}},
            400: problems.example(400, errors.MALFORMED, "Expecting ',' delimiter: line 1 column 12"),
            401: problems.example(401, problems.UNAUTHORIZED, "send Authorization: Bearer <API key>"),
            403: problems.example(403, problems.FORBIDDEN, "this API key may not submit 'image.label'"),
            413: problems.example(413, errors.TOO_LARGE, "the body is over 1048576 bytes"),
            415: problems.example(415, problems.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"),
            422: problems.example(422, errors.INVALID_MESSAGE, "Object missing required field `method`"),
            429: problems.example(429, errors.RATE_LIMITED, "over 100 tasks/s for this API key"),
            502: problems.example(502, errors.AGENT_FAILED, "ValueError: no text"),
            503: problems.example(503, errors.NO_AGENT, "no active agent has 'text.classify'"),
            504: problems.example(504, errors.TIMEOUT, "task deadline passed"),
        },
    )
    async def post_task(request: Request) -> Response:
        """Reached only where ``GatewayApp`` does not take the request first (e.g. under a ``root_path``)."""
        status, ctype, body, extra = await submission.reply(request.scope, request.receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in extra}
        return Response(body, status_code=status or 400, media_type=ctype.decode("latin-1"), headers=headers)

    def owned_task(request: Request, task_id: str, principal: Principal) -> GatewayTask | Response:
        task = gw.store.get(task_id)
        if task is None or (gw.keys.enabled and task.owner != principal.name):
            return problem(404, problems.NOT_FOUND, f"no task {task_id!r} here (unknown, forgotten, or another key's)", instance=f"/tasks/{task_id}")
        return task

    @app.get(
        "/tasks/{task_id}",
        summary="A task's state and outcome",
        responses={
            200: {"description": "the task (result or error once it ended)", "content": {"application/json": {"example": TASK_EXAMPLE}}},
            404: problems.example(404, problems.NOT_FOUND, "no task 'x' here"),
        },
    )
    async def get_task(request: Request, task_id: str) -> Response:
        principal = authenticate(request)
        if isinstance(principal, Response):
            return principal
        task = owned_task(request, task_id, principal)
        if isinstance(task, Response):
            return task
        return _task_response(task)

    @app.get(
        "/tasks/{task_id}/events",
        summary="A task's state changes as server-sent events",
        description="Replays the events so far, then streams new ones until the task ends. Events: accepted, submitted, "
        "resubmitted (sent again after a reconnect), completed, failed, canceled. See docs/GATEWAY.md.",
        responses={
            200: {
                "description": "text/event-stream",
                "content": {"text/event-stream": {"example": 'event: submitted\ndata: {"event":"submitted","task_id":"5f1e-7","ts":1764316800.1}\n\n'}},
            },
            404: problems.example(404, problems.NOT_FOUND, "no task 'x' here"),
        },
    )
    async def task_events(request: Request, task_id: str) -> Response:
        principal = authenticate(request)
        if isinstance(principal, Response):
            return principal
        task = owned_task(request, task_id, principal)
        if isinstance(task, Response):
            return task
        return StreamingResponse(_event_stream(task, gw.link.settle), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ the live view
    @app.get(
        "/capabilities",
        summary="Capabilities with at least one live agent",
        responses={200: {"description": "capability → agents", "content": {"application/json": {"example": {"capabilities": {"text.classify": {"agents": 3, "in_flight": 1}}}}}}},
    )
    async def capabilities(request: Request) -> Response:
        principal = authenticate(request)
        if isinstance(principal, Response):
            return principal
        caps = await gw.view.capabilities()
        out = {m: {"agents": len(a), "in_flight": sum(int(x.get("in_flight", 0)) for x in a)} for m, a in sorted(caps.items())}
        return _json({"capabilities": out})

    @app.get(
        "/agents",
        summary="Every agent the router knows, with its statistics",
        responses={200: {"description": "the router's /agents", "content": {"application/json": {"example": {"router": "router", "strategy": "round_robin", "agents": [{"agent_id": "agent-7", "capabilities": ["text.classify"], "status": "active", "connected": True, "in_flight": 0}]}}}}},
    )
    async def agents(request: Request) -> Response:
        principal = authenticate(request)
        if isinstance(principal, Response):
            return principal
        return _json(await gw.view.agents())

    @app.get("/healthz", summary="Liveness and the router connection", responses={200: {"description": "status", "content": {"application/json": {"example": {"status": "ok", "connected": True}}}}})
    async def healthz() -> Response:
        return _json(
            {
                "status": "ok" if gw.link.connected else "connecting",
                "connected": gw.link.connected,
                "gateway_id": gw.link.peer_id,
                "gateway_key": gw.identity.public_key_text,
                "router": gw.config.router_url,
                "tasks_running": len(gw.store.running),
                "posts_in_protocol": submission.taken,  # POST /tasks answered without an ASGI task (aicp.gateway.http)
            }
        )

    app.submission = submission  # POST /tasks skips the framework (aicp.gateway.submit)

    from aicp.gateway.a2a import install_a2a

    install_a2a(app, gw)
    return app


def _no_telemetry() -> dict[str, Any]:
    """FastAPI >= 0.165 checks OpenTelemetry providers on every request; the gateway does not use them."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    return {}


async def _event_stream(task: GatewayTask, settle: Callable[[GatewayTask], None]) -> AsyncIterator[bytes]:
    settle(task)  # the progress notices kept unverified join its events (GatewayLink.settle)
    queue = task.watch()  # no await between settle(), watch() and the snapshot below: no event is missed or sent twice
    try:
        for event in list(task.events):
            yield _sse(event.event, _encoder.encode(event))
        if task.ended:
            return
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), 15.0)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            yield _sse(event.event, _encoder.encode(event))
            if event.event in ("completed", "failed", "canceled"):
                return
    finally:
        task.unwatch(queue)


def _sse(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
