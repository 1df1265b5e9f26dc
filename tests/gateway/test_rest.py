"""The REST face of the gateway against a real router, real agents and a real uvicorn, driven with httpx."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import nacl.signing
import pytest
from gateway_helpers import TOKENS, Stack, gateway_url, http_answers, router_url, start, start_gateway, stop, wait_ready

pytestmark = pytest.mark.live


def verify(r: dict[str, Any]) -> dict[str, Any]:
    """The README's check, verbatim in spirit: the agent's signature over the signed bytes, then the body."""
    key = base64.urlsafe_b64decode(r["agent_key"].removeprefix("ed25519:") + "=")
    signed = base64.b64decode(r["signed_bytes"])
    nacl.signing.VerifyKey(key).verify(signed, base64.b64decode(r["signature"]))  # raises BadSignatureError
    body = json.loads(signed[signed.index(b"\0") + 1 :])
    assert body["task_id"] == r["id"] and body["sender"] == r["agent_id"] and body["payload"] == r["result"]
    return body


def post(s: Stack, body: Any, who: str = "alice", **headers: str) -> httpx.Response:
    h = {"Content-Type": "application/json", **s.headers(who), **headers}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(s.gateway + "/tasks", content=content, headers=h, timeout=30)


def test_post_waits_and_returns_a_result_the_caller_verifies_alone(stack: Stack) -> None:
    r = post(stack, {"method": "text.classify", "payload": {"text": "great service, I love it"}, "timeout_ms": 5000})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["state"] == "completed" and data["result"]["label"] == "positive"
    assert r.headers["location"] == f"/tasks/{data['id']}"
    body = verify(data)
    assert body["method"] == "text.classify"
    with httpx.stream("GET", stack.gateway + r.headers["location"] + "/events", headers=stack.headers(), timeout=10) as resp:
        replayed = [json.loads(line[6:])["event"] for line in resp.iter_lines() if line.startswith("data: ")]
    assert replayed == ["accepted", "submitted", "completed"]  # answered synchronously: no progress notices asked for (docs/GATEWAY.md)
    tampered = dict(data, signed_bytes=base64.b64encode(base64.b64decode(data["signed_bytes"]).replace(b"positive", b"negative")).decode())
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify(tampered)


def test_a_plain_post_is_answered_in_the_protocol_and_a_chunked_one_by_the_asgi_path(stack: Stack) -> None:
    """The gateway's uvicorn answers a plain synchronous POST without an ASGI task (``posts_in_protocol`` counts it) and
    one with a chunked body through the ASGI path (not counted); both get a verified result, with the same headers."""

    def taken() -> int:
        return int(httpx.get(stack.gateway + "/healthz", timeout=10).json()["posts_in_protocol"])

    before = taken()
    plain = post(stack, {"method": "echo", "payload": {"n": 1}})
    assert taken() == before + 1
    h = {"Content-Type": "application/json", **stack.headers()}
    chunked = httpx.post(stack.gateway + "/tasks", content=iter([b'{"method": "echo", ', b'"payload": {"n": 2}}']), headers=h, timeout=30)
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert taken() == before + 1
    for r, n in ((plain, 1), (chunked, 2)):
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["state"] == "completed" and data["result"] == {"n": n} and r.headers["location"] == f"/tasks/{data['id']}"
        verify(data)
    assert {k for k in plain.headers if k != "date"} == {k for k in chunked.headers if k != "date"}
    # two requests in one write: the first is held until its outcome, the second waits behind it (uvicorn's pipeline) and
    # goes the ASGI way; both are answered, in order, each with its own verified result
    port = int(stack.gateway.rsplit(":", 1)[1])
    heads = [f"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{k}: {v}\r\n" for k, v in stack.headers().items()]
    raw = b""
    for n in (3, 4):
        body = json.dumps({"method": "echo", "payload": {"n": n}}).encode()
        raw += "".join(heads).encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(raw)
        got: list[dict[str, Any]] = []
        for answer in http_answers(conn, 2):
            head, _, answer_body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            got.append(json.loads(answer_body))
    assert [g["result"] for g in got] == [{"n": 3}, {"n": 4}]
    for g in got:
        verify(g)
    assert taken() == before + 2


def test_respond_async_gives_202_location_then_events_and_state(stack: Stack) -> None:
    r = post(stack, {"method": "slow.work", "payload": {"n": 1}}, Prefer="respond-async")
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert r.json()["state"] in ("accepted", "submitted")
    events = []
    with httpx.stream("GET", stack.gateway + loc + "/events", headers=stack.headers(), timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    names = [e["event"] for e in events]
    assert names[:3] == ["accepted", "submitted", "dispatched"] and names[-1] == "completed", names
    assert events[2]["agent_id"] == events[-1]["agent_id"]  # the router's progress notice named the agent that answered
    assert sum(n in ("completed", "failed", "canceled") for n in names) == 1
    got = httpx.get(stack.gateway + loc, headers=stack.headers(), timeout=10).json()
    assert got["state"] == "completed" and got["agent_id"] == events[-1]["agent_id"]
    verify(got)
    # another key does not see it
    assert httpx.get(stack.gateway + loc, headers=stack.headers("bob"), timeout=10).status_code == 404


def test_idempotency_key_gives_one_outcome_and_refuses_a_different_body(stack: Stack) -> None:
    key = "order-" + uuid.uuid4().hex
    body = {"method": "echo", "payload": {"order": 42}}
    first = post(stack, body, **{"Idempotency-Key": key})
    second = post(stack, body, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"] == f"{first.json()['id']}"
    assert first.json()["signature"] == second.json()["signature"]  # the same single outcome, not a second run
    other = post(stack, {"method": "echo", "payload": {"order": 43}}, **{"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["code"] == "idempotency-conflict"
    # the same Idempotency-Key under another API key is another task
    bobs = post(stack, body, who="bob", **{"Idempotency-Key": key})
    assert bobs.status_code == 200 and bobs.json()["id"] != first.json()["id"]


def test_requests_waiting_on_one_idempotent_task_all_get_its_one_outcome(stack: Stack) -> None:
    """The first waiter is answered from the task's end (``on_end``), the others from ``done``: each gets the same answer."""
    key = "wait-" + uuid.uuid4().hex
    h = {"Content-Type": "application/json", **stack.headers(), "Idempotency-Key": key}
    body = json.dumps({"method": "slow.work", "payload": {"n": 1}, "timeout_ms": 8000})

    async def three() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(*(c.post(stack.gateway + "/tasks", content=body, headers=h) for _ in range(3)))

    answers = asyncio.run(three())
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    assert len({r.json()["signature"] for r in answers}) == 1 and len({r.json()["id"] for r in answers}) == 1


def test_idempotency_survives_a_gateway_restart(stack: Stack) -> None:
    key_file = stack.tmp / "restart.key"
    gw = start_gateway(stack.router, key_file, stack.api_keys)
    procs = [gw]
    try:
        url = gateway_url(gw)
        wait_ready(url, {"echo"}, stack.headers())
        body = json.dumps({"method": "echo", "payload": {"restart": True}})
        h = {"Content-Type": "application/json", **stack.headers(), "Idempotency-Key": "restart-1"}
        first = httpx.post(url + "/tasks", content=body, headers=h, timeout=30)
        assert first.status_code == 200, first.text
        gw.kill(signal.SIGKILL)
        gw.popen.wait(timeout=5)
        gw2 = start_gateway(stack.router, key_file, stack.api_keys)
        procs.append(gw2)
        url2 = gateway_url(gw2)
        wait_ready(url2, {"echo"}, stack.headers())
        again = httpx.post(url2 + "/tasks", content=body, headers=h, timeout=30)
        assert again.status_code == 200, again.text
        # byte-identical signed outcome: the router replayed the stored result, the agent did not run it again
        assert again.json()["signed_bytes"] == first.json()["signed_bytes"]
        assert again.json()["signature"] == first.json()["signature"]
        # and the key, reused with another body after the restart, is still a conflict (the digest was kept on disk)
        other = httpx.post(url2 + "/tasks", content=body.replace("true", "false"), headers=h, timeout=30)
        assert other.status_code == 422 and other.json()["code"] == "idempotency-conflict"
        assert (stack.tmp / "restart.key.idempotency").read_text().count("restart-1") == 1
    finally:
        stop(procs)


def test_capabilities_agents_and_openapi(stack: Stack) -> None:
    caps = httpx.get(stack.gateway + "/capabilities", headers=stack.headers(), timeout=10).json()["capabilities"]
    assert caps["text.classify"]["agents"] == 2 and caps["slow.work"]["agents"] == 1
    agents = httpx.get(stack.gateway + "/agents", headers=stack.headers(), timeout=10).json()["agents"]
    assert {"kill-0", "kill-1"} <= {a["agent_id"] for a in agents}
    spec = httpx.get(stack.gateway + "/openapi.json", timeout=10).json()
    for path in ("/tasks", "/tasks/{task_id}", "/tasks/{task_id}/events", "/capabilities", "/agents"):
        text = json.dumps(spec["paths"][path])
        assert '"example"' in text, f"{path} has no example"
    assert httpx.get(stack.gateway + "/docs", timeout=10).status_code == 200


BIG = json.dumps({"method": "echo", "payload": "x" * 70_000})

#: (name, who, content-type, body, headers, status, code)
BAD_INPUTS: list[tuple[str, str | None, str, str, dict[str, str], int, str]] = [
    ("malformed JSON", "alice", "application/json", '{"method": "echo",', {}, 400, "malformed"),
    ("duplicate keys", "alice", "application/json", '{"method": "echo", "method": "text.classify"}', {}, 400, "malformed"),
    ("body too large", "alice", "application/json", BIG, {}, 413, "too-large"),
    ("wrong content type", "alice", "text/plain", '{"method": "echo"}', {}, 415, "unsupported-media-type"),
    ("missing method", "alice", "application/json", '{"payload": 1}', {}, 422, "invalid-message"),
    ("unknown field", "alice", "application/json", '{"method": "echo", "priority": 1}', {}, 422, "invalid-message"),
    ("bad method name", "alice", "application/json", '{"method": "no spaces"}', {}, 422, "invalid-message"),
    ("negative timeout", "alice", "application/json", '{"method": "echo", "timeout_ms": -1}', {}, 422, "invalid-message"),
    ("bad Idempotency-Key", "alice", "application/json", '{"method": "echo"}', {"Idempotency-Key": "has space"}, 422, "invalid-message"),
    ("no API key", None, "application/json", '{"method": "echo"}', {}, 401, "unauthorized"),
    ("unknown API key", "nobody", "application/json", '{"method": "echo"}', {}, 401, "unauthorized"),
    ("method not allowed for the key", "bob", "application/json", '{"method": "text.classify"}', {}, 403, "forbidden"),
    ("no agent has the method", "limited", "application/json", '{"method": "nobody.has.this"}', {}, 503, "no-agent"),
    ("deadline passes", "alice", "application/json", '{"method": "slow.work", "timeout_ms": 300}', {}, 504, "timeout"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_each_bad_input_gets_its_status_and_code_and_the_gateway_keeps_serving(stack: Stack, case: tuple[Any, ...]) -> None:
    _, who, ctype, body, extra, status, code = case
    headers = {"Content-Type": ctype, **extra}
    if who == "nobody":
        headers["Authorization"] = "Bearer not-a-key-at-all-0000"
    elif who is not None:
        headers["Authorization"] = f"Bearer {TOKENS[who]}"
    r = httpx.post(stack.gateway + "/tasks", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == code and problem["status"] == status and problem["type"] == f"urn:aicp:error:{code}"
    assert problem["title"] and problem["detail"]
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    if status == 503:
        assert r.headers["retry-after"]
    ok = post(stack, {"method": "echo", "payload": "still here"})
    assert ok.status_code == 200 and ok.json()["result"] == "still here"


def test_unknown_task_and_unknown_path_are_404_problems(stack: Stack) -> None:
    for path in ("/tasks/no-such-task", "/tasks/no-such-task/events", "/nowhere"):
        r = httpx.get(stack.gateway + path, headers=stack.headers(), timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "not-found", (path, r.text)


def test_over_the_per_key_rate_is_429_with_retry_after(stack: Stack) -> None:
    h = {"Content-Type": "text/plain", **stack.headers("limited")}  # refused cheaply after the rate check

    async def burst() -> list[httpx.Response]:
        # all at once, so even a slow machine cannot spread them thinner than 20/s + a burst of 40
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as c:
            return await asyncio.gather(*(c.post(stack.gateway + "/tasks", content="x", headers=h) for _ in range(200)))

    codes = asyncio.run(burst())
    limited = [r for r in codes if r.status_code == 429]
    assert limited, "200 requests at once never went over 20/s with a burst of 40"
    assert all(r.status_code in (415, 429) for r in codes)
    assert limited[0].json()["code"] == "rate-limited" and int(limited[0].headers["retry-after"]) >= 1
    assert post(stack, {"method": "echo", "payload": 1}).status_code == 200  # other keys are not affected


def test_killing_the_serving_agent_mid_task_ends_with_one_outcome(stack: Stack) -> None:
    r = post(stack, {"method": "kill.work", "payload": {"job": 1}, "timeout_ms": 20000}, Prefer="respond-async")
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    serving = None
    deadline = time.monotonic() + 10
    while serving is None and time.monotonic() < deadline:
        agents = httpx.get(stack.router.replace("ws://", "http://") + "/agents", timeout=5).json()["agents"]
        busy = [a["agent_id"] for a in agents if a["agent_id"].startswith("kill-") and a["in_flight"] > 0]
        serving = busy[0] if busy else None
        time.sleep(0.05)
    assert serving is not None, "no kill.work agent took the task"
    stack.procs[serving].kill(signal.SIGKILL)
    events = []
    with httpx.stream("GET", stack.gateway + loc + "/events", headers=stack.headers(), timeout=30) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    terminal = [e for e in events if e["event"] in ("completed", "failed", "canceled")]
    assert len(terminal) == 1, events
    moves = [(e["event"], e["agent_id"]) for e in events if e["event"] in ("dispatched", "retried")]
    got = httpx.get(stack.gateway + loc, headers=stack.headers(), timeout=10).json()
    assert got["state"] == "completed", got
    survivor = "kill-1" if serving == "kill-0" else "kill-0"
    assert got["agent_id"] == survivor and terminal[0]["agent_id"] == survivor
    assert moves == [("dispatched", serving), ("retried", survivor)], events
    verify(got)


def test_the_key_file_is_created_owner_only_and_open_binds_need_api_keys(stack: Stack) -> None:
    assert (stack.tmp / "gateway.key").stat().st_mode & 0o777 == 0o600
    p = subprocess.run(
        [sys.executable, "-m", "aicp", "gateway", "--url", stack.router, "--host", "0.0.0.0", "--port", "0", "--key", str(stack.tmp / "open.key")],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 2 and "--api-keys" in p.stderr
    assert not (stack.tmp / "open.key").exists()


def test_the_gateway_reconnects_when_the_router_comes_back(stack: Stack) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    procs = []
    try:
        router = start(["-m", "aicp", "serve", "--port", str(port)])
        procs.append(router)
        router_url(router)
        procs.append(start(["-m", "aicp", "agent", "--url", url, "--capability", "echo"]))
        gw = start_gateway(url, stack.tmp / "reconnect.key", stack.api_keys)
        procs.append(gw)
        gw_url = gateway_url(gw)
        wait_ready(gw_url, {"echo"}, stack.headers())
        h = {"Content-Type": "application/json", **stack.headers()}
        assert httpx.post(gw_url + "/tasks", content='{"method": "echo", "payload": 1}', headers=h, timeout=30).status_code == 200
        router.kill(signal.SIGKILL)
        router.popen.wait(timeout=5)
        down = httpx.post(gw_url + "/tasks", content='{"method": "echo", "payload": 2}', headers=h, timeout=30)
        assert down.status_code == 503 and down.json()["code"] == "not-connected" and down.headers["retry-after"]
        router2 = start(["-m", "aicp", "serve", "--port", str(port)])
        procs.append(router2)
        router_url(router2)
        wait_ready(gw_url, {"echo"}, stack.headers())
        again = httpx.post(gw_url + "/tasks", content='{"method": "echo", "payload": 3}', headers=h, timeout=30)
        assert again.status_code == 200 and again.json()["result"] == 3, again.text
    finally:
        stop(procs)
