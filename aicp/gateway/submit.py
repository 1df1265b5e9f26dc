"""``POST /tasks``, the gateway's hot path, as a plain ASGI handler.

Every task submitted over REST goes through here, so this path skips what FastAPI
and Starlette do on each request: the middleware stack (six layers, each wrapping
``send``), the ``Request`` object, a header lookup by linear scan per header, and
the ``Response`` object. Here the headers are read once into a dict, the body is
decoded with msgspec, and the answer is two ASGI messages. ``GatewayApp`` sends
``POST /tasks`` here before FastAPI sees it; the FastAPI route of the same path
still describes it in OpenAPI and calls the same ``TaskSubmission.reply`` (it only
runs where the shortcut does not match, e.g. under a ``root_path``).

The answers are the ones the framework route gave: the same statuses, headers and
RFC 9457 problems, in the same order of checks (401, 429, 415, 413, 400, 422, 403,
503, then the task's outcome).

A plain synchronous ``POST /tasks`` does not even reach the ASGI app: uvicorn's protocol
(``aicp.gateway.http.CoalescingHttpToolsProtocol``) asks ``TaskSubmission.hold`` whether it
may keep the request, and once its body is in, ``TaskSubmission.take`` makes the same
checks (``_admit``, ``_accept``) from the protocol's callback, with no task or coroutine.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any, Final, cast

import msgspec
from fastapi import FastAPI
from msgspec import Meta, Raw
from starlette.types import Receive, Scope, Send

from aicp import errors
from aicp.gateway import problems
from aicp.gateway.auth import Principal
from aicp.gateway.core import Gateway, Problem
from aicp.gateway.legs import LEGS
from aicp.gateway.problems import PROBLEM_JSON, problem_body
from aicp.gateway.tasks import GatewayTask
from aicp.messages import Method, check_strict

log = logging.getLogger("aicp.gateway")

_encoder: Final = msgspec.json.Encoder()
JSON: Final = b"application/json"

Millis = Annotated[float, Meta(gt=0.0, le=1.0e9)]


class TaskRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /tasks``."""

    method: Method
    payload: Raw = msgspec.field(default_factory=lambda: Raw(b"null"))
    timeout_ms: Millis | None = None


#: (status, content type, body, other headers): everything an answer is made of.
Reply = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
#: The client left before its request body arrived: nothing to answer.
GONE: Final[Reply] = (0, b"", b"", [])


def problem_reply(status: int, code: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> Reply:
    return status, PROBLEM_JSON.encode(), problem_body(status, code, detail, **extra), headers or []


def task_reply(task: GatewayTask, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return status, JSON, task.view_json(), headers or []


def outcome_reply(task: GatewayTask) -> Reply:
    """A finished task: 200 with its result, or the problem of its error code."""
    o = task.outcome
    assert o is not None
    loc = [(b"location", f"/tasks/{task.id}".encode())]
    if o.ok:
        return task_reply(task, 200, loc)
    status = problems.status_of(o.code)
    if status in (429, 503):
        loc.append((b"retry-after", b"1"))
    return problem_reply(status, o.code, o.message or o.code, loc, task_id=task.id, instance=f"/tasks/{task.id}")


#: The answer to a request the gateway failed on (logged).
INTERNAL: Final[Reply] = problem_reply(500, "internal", "the gateway failed on this request; see its log")


def from_problem(p: Problem) -> Reply:
    return problem_reply(p.status, p.code, p.detail, [(b"retry-after", b"1")] if p.status == 503 else None)


class TaskSubmission:
    """``POST /tasks``: authenticate, rate-limit, read and check the body, submit, and answer with the outcome."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.decoder = msgspec.json.Decoder(TaskRequest)
        self._coroutine_functions: dict[Any, bool] = {}  # send's function (uvicorn's one, in practice) → is it ``async def``
        self.taken = 0  # requests answered by ``take``, without an ASGI task (shown on /healthz)
        self._tasks: set[asyncio.Task[None]] = set()  # ``take``'s answers that had to wait

    def _steppable(self, send: Send) -> bool:
        """Whether ``send`` returns a coroutine ``_run_at_once`` can run; asked once per method (uvicorn's), not per request. O(1)."""
        func = getattr(send, "__func__", None)
        if func is None:  # a function made per request (a test client's): not kept
            return inspect.iscoroutinefunction(send)
        known = self._coroutine_functions.get(func)
        if known is None:
            known = self._coroutine_functions[func] = inspect.iscoroutinefunction(send)
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = 0  # how many of the answer's two messages have been sent
        try:
            got = await self.prepare(scope, receive)
            if isinstance(got, GatewayTask):
                answered = await self._answer_at_end(got, send)
                if answered == 2:
                    return
                got = outcome_reply(got)
        except Exception:
            log.exception("POST /tasks failed")
            if answered:
                return  # the status line is out: nothing else can be said on this response
            got = INTERNAL
        if got[0] == 0:
            return
        start, body = asgi_messages(got)
        if answered == 0:
            await send(start)
        await send(body)

    async def _answer_at_end(self, task: GatewayTask, send: Send) -> int:
        """Wait for ``task`` to end; its answer is sent from ``TaskStore.finish``, at once, when it can be. Returns the messages sent.

        Resuming this coroutine after the outcome arrives takes a trip through the loop's
        ready queue, behind whatever that iteration has queued (other requests' first steps),
        before the answer is built and written. Instead the answer is built and sent in the
        callback that ends the task (the router's frame, or the local deadline): uvicorn's
        ``send`` runs to its end without waiting unless the connection is under flow
        control, and the ``CoalescingHttpToolsProtocol`` writes the whole answer as soon as
        it is complete. Should ``send`` want to wait (flow control), it is closed before it
        wrote anything and this coroutine sends the rest itself.
        """
        if task.ended:
            return 0
        if task.on_end is not None or not self._steppable(send):  # another request for the same Idempotency-Key
            await task.done.wait()  # holds the hook, or a wrapper's send is not a coroutine: answer from here
            return 0
        ended: asyncio.Future[tuple[int, Exception | None]] = asyncio.get_running_loop().create_future()

        def answer() -> None:
            sent = 0
            try:
                for message in asgi_messages(outcome_reply(task)):
                    if not _run_at_once(cast("Coroutine[Any, Any, None]", send(message))):
                        break
                    sent += 1
            except Exception as exc:  # reported by __call__, as before
                if not ended.done():
                    ended.set_result((sent, exc))
                return
            if not ended.done():
                ended.set_result((sent, None))

        task.on_end = answer
        try:
            sent, exc = await ended  # bounded: the link ends every task by its local deadline
        finally:
            if task.on_end is answer:  # cancelled before the end
                task.on_end = None
        if exc is not None:
            if sent == 0:
                raise exc
            log.error("POST /tasks: the answer to %s broke off after its status line: %r", task.id, exc)
            return 2  # nothing more can be said on this response; uvicorn closes it
        return sent

    async def reply(self, scope: Scope, receive: Receive) -> Reply:
        """The answer to one ``POST /tasks`` (waiting for the outcome unless asked not to)."""
        got = await self.prepare(scope, receive)
        if isinstance(got, GatewayTask):
            if not got.ended:
                await got.done.wait()  # bounded: the link ends every task by its local deadline
            return outcome_reply(got)
        return got

    async def prepare(self, scope: Scope, receive: Receive) -> Reply | GatewayTask:
        """Check and submit one ``POST /tasks``: its answer now, or the task whose outcome is the answer."""
        headers = header_dict(scope["headers"])
        principal = self._admit(headers)
        if not isinstance(principal, Principal):
            return principal
        limit = self.gw.config.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return problem_reply(413, errors.TOO_LARGE, f"the body is over {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        got = self._accept(principal, headers, body)
        if not isinstance(got, Accepted):
            return got
        task = got.task
        if got.is_new:
            await self.gw.link.send(task)
        if got.respond_async:
            if task.ended:
                return outcome_reply(task)
            return task_reply(task, 202, [(b"location", f"/tasks/{task.id}".encode()), (b"preference-applied", b"respond-async")])
        return task

    def _admit(self, headers: dict[bytes, bytes]) -> Principal | Reply:
        """The checks made before the body is read, in their order: 401, 429, 415, 413 (declared length)."""
        gw = self.gw
        auth = headers.get(b"authorization")
        principal = gw.keys.principal(auth.decode("latin-1") if auth is not None else None)
        if principal is None:
            return problem_reply(401, problems.UNAUTHORIZED, "send Authorization: Bearer <API key>", [(b"www-authenticate", b'Bearer realm="aicp"')])
        if not gw.admit(principal):
            return problem_reply(429, errors.RATE_LIMITED, f"over {gw.rates.rate:g} tasks/s for this API key", [(b"retry-after", str(gw.rates.retry_after_s).encode())])
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if ctype != JSON and not ctype.endswith(b"+json"):
            shown = repr(ctype.decode("latin-1")) if ctype else "'missing'"
            return problem_reply(415, problems.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be application/json, not {shown}")
        limit = gw.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return problem_reply(413, errors.TOO_LARGE, f"the body is over {limit} bytes")
        return principal

    def _accept(self, principal: Principal, headers: dict[bytes, bytes], body: bytes, soon: bool = False) -> Accepted | Reply:
        """The checks of the whole body (400, 422), then ``Gateway.accept`` (403, 422, 503): the task, not sent yet, or the refusal.
        ``soon``: the caller sends a new task with ``link.send_soon``."""
        try:
            check_strict(body)
            req = self.decoder.decode(body)
        except errors.DecodeError as exc:
            return problem_reply(400, errors.MALFORMED, exc.message)
        except msgspec.ValidationError as exc:
            return problem_reply(422, errors.INVALID_MESSAGE, str(exc))
        except msgspec.DecodeError as exc:
            return problem_reply(400, errors.MALFORMED, str(exc))
        idem_raw = headers.get(b"idempotency-key")
        idem = idem_raw.decode("latin-1") if idem_raw is not None else None
        digest = hashlib.sha256(body).digest() if idem is not None else None
        respond_async = b"respond-async" in headers.get(b"prefer", b"")
        task, prob, is_new = self.gw.accept(principal, req.method, req.payload, req.timeout_ms, idem, digest, watchable=respond_async, soon=soon)
        if task is None:
            assert prob is not None
            return from_problem(prob)
        return Accepted(task, is_new, respond_async)

    # ------------------------------------------------------------------ without an ASGI task (aicp.gateway.http)
    def hold(self, headers: Iterable[tuple[bytes, bytes]], max_body: int) -> dict[bytes, bytes] | None:
        """Whether the HTTP protocol may keep this ``POST /tasks`` and answer it with ``take`` once its body is in.

        Yes (its headers, read once) for a synchronous request whose body has a declared
        length of at most ``max_body`` bytes and of at most the gateway's limit; None for any
        other (``Prefer: respond-async``, a chunked or oversized body, no length): those go
        the ASGI way, which answers a declared 413 before the body. O(headers).
        """
        found = header_dict(headers)
        declared = found.get(b"content-length")
        if (
            declared is None
            or not declared.isdigit()
            or int(declared) > min(max_body, self.gw.config.max_body_bytes)
            or b"transfer-encoding" in found
            or b"respond-async" in found.get(b"prefer", b"")
        ):
            return None
        return found

    def take(self, headers: dict[bytes, bytes], body: bytes, answer: Callable[[Reply], None]) -> None:
        """Answer a held ``POST /tasks`` whose whole body is in: the checks, the task's frame and the answer run here, in
        the protocol's callback, with no ASGI task in between; the outcome's answer is given from the callback that ends
        the task (``TaskStore.finish``). The same checks in the same order, the same answers as ``__call__``.

        ``answer`` writes a reply on the request's connection (``CoalescingHttpToolsProtocol``);
        it is called once and must not raise. ``take`` never raises.
        """
        self.taken += 1
        try:
            principal = self._admit(headers)
            got = self._accept(principal, headers, body, soon=True) if isinstance(principal, Principal) else principal
            if isinstance(got, Accepted):
                task = got.task
                if got.is_new:
                    self.gw.link.send_soon(task)
                if not task.ended:
                    self._answer_on_end(task, answer)
                    return
                got = outcome_reply(task)
        except Exception:
            log.exception("POST /tasks failed")
            got = INTERNAL
        answer(got)

    def _answer_on_end(self, task: GatewayTask, answer: Callable[[Reply], None]) -> None:
        if task.on_end is not None:  # another request for the same Idempotency-Key holds the hook: answer from a task
            self._later(self._answer_when_done(task, answer))
            return

        def on_end() -> None:
            try:
                reply = outcome_reply(task)
            except Exception:
                log.exception("POST /tasks failed")
                reply = INTERNAL
            answer(reply)
            if LEGS is not None:
                LEGS.answered(task.id)

        task.on_end = on_end

    async def _answer_when_done(self, task: GatewayTask, answer: Callable[[Reply], None]) -> None:
        await task.done.wait()  # bounded: the link ends every task by its local deadline
        answer(outcome_reply(task))

    def _later(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class Accepted:
    """A task ``Gateway.accept`` took: new (to send) or an earlier one with the same Idempotency-Key."""

    __slots__ = ("is_new", "respond_async", "task")

    def __init__(self, task: GatewayTask, is_new: bool, respond_async: bool) -> None:
        self.task = task
        self.is_new = is_new
        self.respond_async = respond_async


def header_dict(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """ASGI headers (lower-case names) as a dict; the first of a repeated one counts. O(headers)."""
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        if name not in out:
            out[name] = value
    return out


def asgi_messages(reply: Reply) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages of an answer."""
    status, ctype, body, extra = reply
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}, {"type": "http.response.body", "body": body}


def _run_at_once(step: Coroutine[Any, Any, None]) -> bool:
    """Run a coroutine that need not wait to its end now; False (and closed, having done nothing) if it wanted to wait.

    Only for uvicorn's ``send``: it waits only first thing, for a paused transport to
    drain, and closing it there leaves the response untouched.
    """
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()
    return False


class GatewayApp(FastAPI):
    """FastAPI, with ``POST /tasks`` answered by ``submission`` before the framework's stack."""

    submission: TaskSubmission | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.submission is not None and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/tasks":
            await self.submission(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
