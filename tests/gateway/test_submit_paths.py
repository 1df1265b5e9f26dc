"""``POST /tasks`` answers the same through the raw ASGI shortcut and through the FastAPI route.

The app is called in-process (no sockets, no lifespan: the gateway is not connected,
so a valid body gets ``503 not-connected``). Under a ``root_path`` ``GatewayApp``
does not take the request, so FastAPI's route answers it; both must give the same
status, content type, problem body and headers, and the route must stay in OpenAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from gateway_helpers import http_answers

from aicp.gateway.app import create_app
from aicp.gateway.core import GatewayConfig

KEYS = "alice-token-0123456789abcdef alice echo\n"
AUTH = {"Authorization": "Bearer alice-token-0123456789abcdef"}
JSON_CT = {"Content-Type": "application/json"}

#: (name, headers, body, status, code)
CASES: list[tuple[str, dict[str, str], bytes, int, str]] = [
    ("no API key", JSON_CT, b'{"method": "echo"}', 401, "unauthorized"),
    ("wrong content type", {**AUTH, "Content-Type": "text/plain"}, b'{"method": "echo"}', 415, "unsupported-media-type"),
    ("no content type", AUTH, b'{"method": "echo"}', 415, "unsupported-media-type"),
    ("body too large", {**AUTH, **JSON_CT}, json.dumps({"method": "echo", "payload": "x" * 2000}).encode(), 413, "too-large"),
    ("malformed JSON", {**AUTH, **JSON_CT}, b'{"method": "echo",', 400, "malformed"),
    ("duplicate keys", {**AUTH, **JSON_CT}, b'{"method": "echo", "method": "x"}', 400, "malformed"),
    ("missing method", {**AUTH, **JSON_CT}, b'{"payload": 1}', 422, "invalid-message"),
    ("unknown field", {**AUTH, **JSON_CT}, b'{"method": "echo", "priority": 1}', 422, "invalid-message"),
    ("negative timeout", {**AUTH, **JSON_CT}, b'{"method": "echo", "timeout_ms": -1}', 422, "invalid-message"),
    ("bad Idempotency-Key", {**AUTH, **JSON_CT, "Idempotency-Key": "has space"}, b'{"method": "echo"}', 422, "invalid-message"),
    ("method not allowed for the key", {**AUTH, **JSON_CT}, b'{"method": "text.classify"}', 403, "forbidden"),
    ("not connected to a router", {**AUTH, **JSON_CT, "Content-Type": "application/json; charset=utf-8"}, b'{"method": "echo"}', 503, "not-connected"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    tmp = tmp_path_factory.mktemp("submit")
    (tmp / "keys").write_text(KEYS)
    return create_app(GatewayConfig(key_file=str(tmp / "gateway.key"), api_keys=str(tmp / "keys"), max_body_bytes=1024, idempotency_journal=None))


async def both(app: FastAPI, headers: dict[str, str], body: bytes) -> tuple[httpx.Response, httpx.Response]:
    out = []
    for root in ("", "/gw"):  # "": GatewayApp's shortcut; "/gw": FastAPI's route
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path=root), base_url="http://127.0.0.1") as client:
            out.append(await client.post(root + "/tasks", content=body, headers=headers))
    return out[0], out[1]


def comparable(r: httpx.Response) -> dict[str, Any]:
    return {"status": r.status_code, "body": r.json(), "headers": {k: v for k, v in r.headers.items() if k not in ("content-length",)}}


@contextlib.contextmanager
def serving(app: FastAPI, **config: Any) -> Iterator[int]:
    """A real uvicorn with ``CoalescingHttpToolsProtocol`` serving ``app`` on a free 127.0.0.1 port, in a thread
    (``config``: more ``uvicorn.Config`` options); yields the port once it serves, and stops it afterwards, also when
    the test fails."""
    import socket
    import threading
    import time

    import uvicorn

    from aicp.gateway.http import CoalescingHttpToolsProtocol

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=CoalescingHttpToolsProtocol, lifespan="off", log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_shortcut_and_the_fastapi_route_give_the_same_problem(app: FastAPI, case: tuple[Any, ...]) -> None:
    _, headers, body, status, code = case
    fast, routed = asyncio.run(both(app, headers, body))
    assert fast.status_code == status, fast.text
    assert fast.headers["content-type"] == "application/problem+json"
    problem = fast.json()
    assert problem["code"] == code and problem["status"] == status and problem["type"] == f"urn:aicp:error:{code}" and problem["detail"]
    assert comparable(fast) == comparable(routed)
    if status == 401:
        assert fast.headers["www-authenticate"].startswith("Bearer")
    if status == 503:
        assert fast.headers["retry-after"] == "1"


def test_post_tasks_stays_in_the_openapi_document_with_its_example(app: FastAPI) -> None:
    op = app.openapi()["paths"]["/tasks"]["post"]
    assert op["requestBody"]["content"]["application/json"]["example"]["method"] == "text.classify"
    assert {"200", "202", "400", "413", "415", "422", "503", "504"} <= set(op["responses"])


def test_an_answer_is_sent_at_once_unless_send_would_wait() -> None:
    """``_run_at_once`` runs a ``send`` that need not wait to its end; one that would wait is closed having written nothing."""
    from aicp.gateway.submit import _run_at_once

    written: list[str] = []
    closed: list[bool] = []

    async def send(message: str, paused: asyncio.Event | None) -> None:
        try:
            if paused is not None:
                await paused.wait()  # uvicorn's send under flow control: waits first thing
            written.append(message)
        finally:
            closed.append(True)

    async def run() -> None:
        assert _run_at_once(send("now", None)) is True
        assert _run_at_once(send("later", asyncio.Event())) is False

    asyncio.run(run())
    assert written == ["now"] and closed == [True, True]


@pytest.mark.parametrize("access_log", [False, True], ids=["written-by-the-protocol", "with-an-access-log-uvicorns-send"])
def test_uvicorns_protocol_answers_a_plain_post_itself_and_the_same_as_the_asgi_path(app: FastAPI, access_log: bool) -> None:
    """A real uvicorn with ``CoalescingHttpToolsProtocol``: every case, sent plain (a declared length: the protocol
    answers it without an ASGI task, counted in ``submission.taken``) and with a chunked body (the ASGI path, not
    counted; so is a body over the limit), gets the same answer both ways, and the same as ``GatewayApp`` called directly. ``Prefer: respond-async``
    and another path are not taken either."""
    # access_log off, as ``aicp gateway`` runs it: the protocol writes the answer itself (with one, uvicorn's send does)
    with serving(app, proxy_headers=False, access_log=access_log) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            submission = app.submission  # type: ignore[attr-defined]
            for name, headers, body, status, code in CASES:
                before = submission.taken
                held = len(body) <= 1024  # over the gateway's limit: the ASGI path answers 413 before the body
                plain = client.post("/tasks", content=body, headers=headers)
                assert submission.taken == before + held, name
                chunked = client.post("/tasks", content=iter([body[:5], body[5:]]), headers=headers)
                assert submission.taken == before + held, name
                assert chunked.request.headers.get("transfer-encoding") == "chunked"
                direct, _ = asyncio.run(both(app, headers, body))
                assert plain.status_code == chunked.status_code == direct.status_code == status, (name, plain.text)
                assert plain.json() == chunked.json() == direct.json() and plain.json()["code"] == code, name
                served = {k: v for k, v in plain.headers.items() if k != "date"}
                assert served == {k: v for k, v in chunked.headers.items() if k != "date"}, name
                assert {k: v for k, v in served.items() if k not in ("server", "content-length")} == comparable(direct)["headers"], name
            before = submission.taken
            later = client.post("/tasks", content=b'{"method": "echo"}', headers={**AUTH, **JSON_CT, "Prefer": "respond-async"})
            assert later.status_code == 503 and later.json()["code"] == "not-connected"
            assert client.get("/tasks/nothing-here", headers=AUTH).status_code == 404
            assert submission.taken == before
            assert client.get("/healthz").json()["posts_in_protocol"] == before


def test_the_keep_alive_timeout_closes_an_idle_connection_and_not_a_busy_one(app: FastAPI) -> None:
    """``CoalescingHttpToolsProtocol`` keeps one keep-alive timer per connection: requests 0.25 s apart for longer than
    the 1 s timeout are all answered on one connection (the timer, due, is armed again); then idle, it is closed."""
    import socket
    import time

    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with serving(app, timeout_keep_alive=1) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            for _ in range(7):
                conn.sendall(request)
                answer = conn.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                time.sleep(0.25)
            started = time.monotonic()
            assert conn.recv(65536) == b""  # closed by the server (the socket's timeout is 10 s)
            assert time.monotonic() - started < 9


def test_the_lean_path_keeps_http_semantics_pipelining_http10_split_bodies_and_query_strings(app: FastAPI) -> None:
    """The protocol's held ``POST /tasks`` (no scope, no ``RequestResponseCycle``) on a raw socket: a body arriving in
    pieces is held until it is all in; two requests in one write (pipelined) are both answered, in order; an HTTP/1.0 request is answered with ``connection: close`` and the connection closed; a query
    string takes the ASGI path. Every answer is the gateway's (not connected: 503)."""
    import socket
    import time

    body = b'{"method": "echo"}'

    def post(target: str = "/tasks", version: str = "1.1") -> bytes:
        head = f"POST {target} HTTP/{version}\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
        return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    with serving(app, proxy_headers=False) as port:
        submission = app.submission  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            before = submission.taken
            request = post()
            conn.sendall(request[:-7])
            time.sleep(0.05)
            conn.sendall(request[-7:])
            (one,) = http_answers(conn, 1)
            assert one.startswith(b"HTTP/1.1 503") and b'"not-connected"' in one and submission.taken == before + 1
            conn.sendall(post() + post())  # pipelined
            two = http_answers(conn, 2)
            assert all(a.startswith(b"HTTP/1.1 503") and b'"not-connected"' in a for a in two), two
            assert submission.taken == before + 2
            conn.sendall(post("/tasks?x=1"))
            (asgi,) = http_answers(conn, 1)
            assert asgi.startswith(b"HTTP/1.1 503") and submission.taken == before + 2
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(post(version="1.0"))
            (old,) = http_answers(conn, 1)
            assert old.startswith(b"HTTP/1.1 503") and b"connection: close\r\n" in old.lower() and submission.taken == before + 3
            assert conn.recv(65536) == b""


def test_an_untested_uvicorn_release_sends_every_request_the_asgi_way(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``IN_PROTOCOL`` false (a uvicorn release other than ``TESTED_UVICORN``) the protocol holds nothing: a plain
    ``POST /tasks`` is answered by the ASGI path (not counted in ``taken``), with the same answer."""
    from aicp.gateway import http

    monkeypatch.setattr(http, "IN_PROTOCOL", False)
    with serving(app, proxy_headers=False) as port:
        submission = app.submission  # type: ignore[attr-defined]
        before = submission.taken
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            r = client.post("/tasks", content=b'{"method": "echo"}', headers={**AUTH, **JSON_CT})
        assert r.status_code == 503 and r.json()["code"] == "not-connected" and r.headers["retry-after"] == "1"
        assert submission.taken == before
