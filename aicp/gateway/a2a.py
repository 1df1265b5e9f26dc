"""A2A 1.0 over JSON-RPC: every AICP capability is one A2A agent, backed by the whole pool.

``/a2a/METHOD`` speaks the JSON-RPC binding exactly as the official ``a2a-sdk`` 1.x
does: the SDK's own ``JsonRpcDispatcher`` parses requests, checks the
``A2A-Version`` header and writes responses and SSE streams, and ``AicpRequestHandler``
below answers them from the gateway's tasks. Its Agent Card is at
``/a2a/METHOD/.well-known/agent-card.json``, built live from the router's registry
(a capability with no live agent has no card: 404). The root card at
``/.well-known/agent-card.json`` lists every live capability as a skill; its endpoint
``/a2a`` takes the capability from the message's ``metadata.skill``.

Mapping:

* ``SendMessage``: the message's text and data parts become the task payload (one
  part: its value; several: a list). The ``messageId`` is the Idempotency-Key, so a
  client retrying a message gets the first outcome. The answer is a Task; its result
  is the artifact ``result`` (one data part) whose metadata ``aicp`` holds the agent
  id, the agent key, the signature and the signed bytes. ``configuration.returnImmediately``
  answers at once with the task still working.
* ``SendStreamingMessage``: the Task, a ``working`` status once the router has it,
  then the artifact and the final status. ``SubscribeToTask`` streams the same for a
  running task.
* ``GetTask``, ``CancelTask``: a task of this capability and this API key. Canceling
  ends the A2A task as ``canceled`` at once; AICP has no cancel on the wire, so the
  agent may still run it and its result is dropped.
* States: running → ``submitted`` (not yet at the router) or ``working``; a result →
  ``completed``; a task refused before it ran (``no-agent``, ``rejected``,
  ``rate-limited``, ``overloaded``, ``idempotency-conflict``) → ``rejected``; any other
  error (``timeout``, ``agent-failed``, ``shutting-down``…) → ``failed``; CancelTask →
  ``canceled``. The AICP code is in the status message's metadata ``code``.
* Errors: JSON-RPC parse error (-32700), invalid request (-32600), method not found
  (-32601), invalid params (-32602), task not found (-32001), task not cancelable
  (-32002), unsupported operation (-32004), version not supported (-32009).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import (
    InternalError,
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.proto_utils import validate_proto_required_fields
from google.protobuf import json_format, struct_pb2
from msgspec import Raw
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aicp import errors
from aicp.gateway import problems
from aicp.gateway.auth import ANONYMOUS, Principal
from aicp.gateway.link import IDEMPOTENCY_CONFLICT
from aicp.gateway.problems import problem
from aicp.gateway.tasks import TERMINAL, Event, GatewayTask
from aicp.messages import encode
from aicp.signing import CONTEXT

if TYPE_CHECKING:
    from fastapi import FastAPI

    from aicp.gateway.core import Gateway

#: AICP codes of tasks refused before any agent ran them: A2A ``rejected``.
REJECTED_CODES: Final = frozenset({errors.NO_AGENT, errors.REJECTED, errors.RATE_LIMITED, errors.OVERLOADED, errors.ID_CONFLICT, IDEMPOTENCY_CONFLICT})
BEARER: Final = "bearer"


# ---------------------------------------------------------------------------- AICP → A2A objects
def _value(raw: bytes) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.Parse(raw, value)
    return value


def task_state(task: GatewayTask) -> int:
    if task.state == "completed":
        return pb.TASK_STATE_COMPLETED
    if task.state == "canceled":
        return pb.TASK_STATE_CANCELED
    if task.state == "failed":
        code = task.outcome.code if task.outcome is not None else ""
        return pb.TASK_STATE_REJECTED if code in REJECTED_CODES else pb.TASK_STATE_FAILED
    return pb.TASK_STATE_SUBMITTED if task.state == "accepted" else pb.TASK_STATE_WORKING


def task_status(task: GatewayTask) -> pb.TaskStatus:
    status = pb.TaskStatus(state=task_state(task))  # type: ignore[arg-type]
    status.timestamp.GetCurrentTime()
    o = task.outcome
    if o is not None and not o.ok:
        msg = pb.Message(message_id=f"{task.id}:status", context_id=task.context_id or task.id, task_id=task.id, role=pb.ROLE_AGENT)
        msg.parts.append(pb.Part(text=f"{o.code}: {o.message}" if o.message else o.code))
        msg.metadata.update({"code": o.code})
        status.message.CopyFrom(msg)
    return status


def result_artifact(task: GatewayTask) -> pb.Artifact | None:
    o = task.outcome
    if o is None or not o.ok or o.payload is None or o.body is None:
        return None
    art = pb.Artifact(artifact_id="result", name="result", description=f"the signed result of {task.method}")
    art.parts.append(pb.Part(data=_value(bytes(o.payload)), media_type="application/json"))
    art.metadata.update(
        {
            "aicp": {
                "task_id": task.id,
                "agent_id": o.agent_id,
                "agent_key": o.agent_key,
                "signature": o.signature,
                "signed_bytes": base64.b64encode(CONTEXT + o.body).decode("ascii"),
            }
        }
    )
    return art


def to_task(task: GatewayTask) -> pb.Task:
    out = pb.Task(id=task.id, context_id=task.context_id or task.id, status=task_status(task))
    art = result_artifact(task)
    if art is not None:
        out.artifacts.append(art)
    out.metadata.update({"method": task.method})
    return out


def payload_of(message: pb.Message) -> bytes:
    """The task payload (JSON bytes) of an A2A message: its text and data parts."""
    values: list[Any] = []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "text":
            values.append(part.text)
        elif kind == "data":
            values.append(json_format.MessageToDict(part.data))
        else:
            raise InvalidParamsError(message=f"only text and data parts map to an AICP payload, not {kind or 'an empty part'}")
    if not values:
        raise InvalidParamsError(message="the message has no parts")
    return encode(values[0] if len(values) == 1 else values)


# ---------------------------------------------------------------------------- Agent Cards
def _security(card_or_skill: Any, secured: bool) -> None:
    if secured:
        req = card_or_skill.security_requirements.add()
        req.schemes[BEARER].SetInParent()


def skill_for(method: str, agents: list[dict[str, Any]]) -> pb.AgentSkill:
    skill = pb.AgentSkill(
        id=method,
        name=method,
        description=f"AICP capability {method}, served by {len(agents)} live agent(s) with routing, failover and signed results",
        tags=["aicp", method.split(".", 1)[0]],
        input_modes=["application/json", "text/plain"],
        output_modes=["application/json"],
    )
    skill.examples.append(json.dumps({"text": "great service"}) if method == "text.classify" else "hello")
    return skill


def build_card(name: str, description: str, url: str, skills: list[pb.AgentSkill], secured: bool) -> pb.AgentCard:
    card = pb.AgentCard(
        name=name,
        description=description,
        version="1.0.0",
        capabilities=pb.AgentCapabilities(streaming=True, push_notifications=False),
        provider=pb.AgentProvider(organization="AICP", url=url.rsplit("/a2a", 1)[0]),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json"],
    )
    card.supported_interfaces.append(pb.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"))
    card.skills.extend(skills)
    if secured:
        card.security_schemes[BEARER].http_auth_security_scheme.CopyFrom(
            pb.HTTPAuthSecurityScheme(scheme="Bearer", description="an API key from the gateway's key file")
        )
        _security(card, True)
    return card


# ---------------------------------------------------------------------------- the request handler
def _capability(context: ServerCallContext, request_metadata: Any = None) -> str:
    cap = context.state.get("capability")
    if cap:
        return str(cap)
    for meta in (request_metadata,):
        if meta is not None and "skill" in meta:
            return str(meta["skill"])
    raise InvalidParamsError(message="the root endpoint /a2a needs metadata.skill (a capability); or use /a2a/{capability}")


class AicpRequestHandler(RequestHandler):
    """Answers A2A requests from the gateway's tasks."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def _principal(self, context: ServerCallContext) -> Principal:
        return context.state.get("principal") or ANONYMOUS

    def _find(self, task_id: str, context: ServerCallContext) -> GatewayTask:
        task = self.gw.store.get(task_id)
        cap = context.state.get("capability")
        if task is None or (cap and task.method != cap) or (self.gw.keys.enabled and task.owner != self._principal(context).name):
            raise TaskNotFoundError(message=f"no task {task_id!r} at this agent")
        return task

    async def _start(self, params: pb.SendMessageRequest, context: ServerCallContext, watchable: bool) -> GatewayTask:
        validate_proto_required_fields(params)
        message = params.message
        if message.task_id:
            raise UnsupportedOperationError(message="AICP tasks are single-turn: send a new message without taskId")
        meta = json_format.MessageToDict(params.metadata) if params.HasField("metadata") else {}
        mmeta = json_format.MessageToDict(message.metadata) if message.HasField("metadata") else {}
        method = _capability(context, meta or mmeta)
        body = payload_of(message)
        principal = self._principal(context)
        timeout_ms = meta.get("timeout_ms") or mmeta.get("timeout_ms")
        try:
            timeout = float(timeout_ms) if timeout_ms is not None else None
        except (TypeError, ValueError):
            raise InvalidParamsError(message="metadata.timeout_ms must be a number") from None
        if timeout is not None and timeout <= 0:
            raise InvalidParamsError(message="metadata.timeout_ms must be positive")
        idem = message.message_id if len(message.message_id) <= 96 else None
        digest = hashlib.sha256(method.encode() + b"\0" + body).digest()
        task, prob, is_new = self.gw.accept(principal, method, Raw(body), timeout, idem, digest, message.context_id, watchable)
        if task is None:
            assert prob is not None
            if prob.status in (403, 422):
                raise InvalidParamsError(message=prob.detail, data={"code": prob.code})
            raise InternalError(message=prob.detail, data={"code": prob.code})
        if is_new:
            await self.gw.link.send(task)
        return task

    async def on_message_send(self, params: pb.SendMessageRequest, context: ServerCallContext) -> pb.Task | pb.Message:
        task = await self._start(params, context, watchable=params.configuration.return_immediately)
        if not params.configuration.return_immediately:
            await task.done.wait()  # bounded by the task's local deadline
        return to_task(task)

    async def on_message_send_stream(self, params: pb.SendMessageRequest, context: ServerCallContext) -> AsyncGenerator[Any]:
        task = await self._start(params, context, watchable=True)
        async for event in _stream(task):
            yield event

    async def on_subscribe_to_task(self, params: pb.SubscribeToTaskRequest, context: ServerCallContext) -> AsyncGenerator[Any]:
        task = self._find(params.id, context)
        if task.ended:
            raise UnsupportedOperationError(message=f"task {task.id!r} has already ended; use GetTask")
        async for event in _stream(task):
            yield event

    async def on_get_task(self, params: pb.GetTaskRequest, context: ServerCallContext) -> pb.Task | None:
        return to_task(self._find(params.id, context))

    async def on_cancel_task(self, params: pb.CancelTaskRequest, context: ServerCallContext) -> pb.Task | None:
        task = self._find(params.id, context)
        if task.ended or not self.gw.link.cancel(task):
            raise TaskNotCancelableError(message=f"task {task.id!r} has already ended ({task.state})")
        return to_task(task)

    async def on_list_tasks(self, params: pb.ListTasksRequest, context: ServerCallContext) -> pb.ListTasksResponse:
        raise UnsupportedOperationError(message="ListTasks is not supported; keep the task ids you were given")

    async def on_create_task_push_notification_config(self, params: pb.TaskPushNotificationConfig, context: ServerCallContext) -> pb.TaskPushNotificationConfig:
        raise UnsupportedOperationError(message="push notifications are not supported; use SendStreamingMessage")

    async def on_get_task_push_notification_config(self, params: pb.GetTaskPushNotificationConfigRequest, context: ServerCallContext) -> pb.TaskPushNotificationConfig:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_list_task_push_notification_configs(
        self, params: pb.ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> pb.ListTaskPushNotificationConfigsResponse:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_delete_task_push_notification_config(self, params: pb.DeleteTaskPushNotificationConfigRequest, context: ServerCallContext) -> None:
        raise UnsupportedOperationError(message="push notifications are not supported")

    async def on_get_extended_agent_card(self, params: pb.GetExtendedAgentCardRequest, context: ServerCallContext) -> pb.AgentCard:
        raise UnsupportedOperationError(message="there is no extended agent card")


async def _stream(task: GatewayTask) -> AsyncGenerator[Any]:
    """The Task now, ``working`` once the router has it, then the artifact and the final status."""
    queue: asyncio.Queue[Event] = task.watch()  # no await before the snapshot: nothing missed, nothing twice
    try:
        yield to_task(task)
        working_sent = task.state == "submitted"
        while not task.ended:
            event = await queue.get()
            if event.event in ("submitted", "resubmitted") and not working_sent:
                working_sent = True
                yield pb.TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id or task.id, status=task_status(task))
        art = result_artifact(task)
        if art is not None:
            yield pb.TaskArtifactUpdateEvent(task_id=task.id, context_id=task.context_id or task.id, artifact=art, last_chunk=True)
        yield pb.TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id or task.id, status=task_status(task))
    finally:
        task.unwatch(queue)


class _ContextBuilder(DefaultServerCallContextBuilder):
    def build(self, request: Request) -> ServerCallContext:
        ctx = super().build(request)
        ctx.state["capability"] = request.path_params.get("capability")
        ctx.state["principal"] = getattr(request.state, "principal", None)
        return ctx


# ---------------------------------------------------------------------------- routes
def install_a2a(app: FastAPI, gw: Gateway) -> None:
    dispatcher = JsonRpcDispatcher(AicpRequestHandler(gw), context_builder=_ContextBuilder())
    secured = gw.keys.enabled

    def base_url(request: Request) -> str:
        return (gw.config.public_url or str(request.base_url)).rstrip("/")

    async def rpc(request: Request) -> Response:
        principal = gw.keys.principal(request.headers.get("authorization"))
        if principal is None:
            return problem(401, problems.UNAUTHORIZED, "send Authorization: Bearer <API key>", headers={"WWW-Authenticate": 'Bearer realm="aicp"'})
        cap = request.path_params.get("capability")
        if cap is not None and not principal.may(cap):
            return problem(403, problems.FORBIDDEN, f"this API key may not use {cap!r}")
        if not gw.admit(principal):
            return problem(429, errors.RATE_LIMITED, f"over {gw.rates.rate:g} requests/s for this API key", headers={"Retry-After": str(gw.rates.retry_after_s)})
        limit = gw.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return problem(413, errors.TOO_LARGE, f"the body is over {limit} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return problem(413, errors.TOO_LARGE, f"the body is over {limit} bytes")
        request._body = body  # the dispatcher's request.json() reads this cached body
        request.state.principal = principal
        return await dispatcher.handle_requests(request)

    async def capability_card(request: Request) -> Response:
        cap = request.path_params["capability"]
        live = await gw.view.capabilities()
        agents = live.get(cap)
        if not agents:
            return problem(404, problems.NOT_FOUND, f"no live agent has {cap!r}")
        card = build_card(f"AICP {cap}", f"The AICP capability {cap}: any of {len(agents)} live agent(s), with failover and signed results.", f"{base_url(request)}/a2a/{cap}", [skill_for(cap, agents)], secured)
        return JSONResponse(agent_card_to_dict(card), headers={"Cache-Control": "no-store"})

    async def root_card(request: Request) -> Response:
        live = await gw.view.capabilities()
        skills = [skill_for(m, a) for m, a in sorted(live.items())]
        card = build_card(
            "AICP gateway",
            "Every live AICP capability as a skill. Each skill is also its own agent at /a2a/{skill}; here, name it in metadata.skill.",
            f"{base_url(request)}/a2a",
            skills,
            secured,
        )
        return JSONResponse(agent_card_to_dict(card), headers={"Cache-Control": "no-store"})

    app.router.routes.extend(
        [
            Route("/.well-known/agent-card.json", root_card, methods=["GET"]),
            Route("/a2a", rpc, methods=["POST"]),
            Route("/a2a/{capability}/.well-known/agent-card.json", capability_card, methods=["GET"]),
            Route("/a2a/{capability}", rpc, methods=["POST"]),
        ]
    )


__all__ = ["TERMINAL", "AicpRequestHandler", "build_card", "install_a2a", "payload_of", "to_task"]
