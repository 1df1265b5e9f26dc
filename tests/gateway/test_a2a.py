"""The A2A face of the gateway, driven by the official a2a-sdk 1.x client (and raw JSON-RPC for the error codes)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import nacl.signing
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types import a2a_pb2 as pb
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError, UnsupportedOperationError
from gateway_helpers import TOKENS, Stack
from google.protobuf import json_format, struct_pb2

pytestmark = pytest.mark.live


def run(coro: Any, timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def message(*parts: Any, message_id: str | None = None) -> pb.Message:
    msg = pb.Message(message_id=message_id or uuid.uuid4().hex, role=pb.ROLE_USER)
    for p in parts:
        if isinstance(p, str):
            msg.parts.append(pb.Part(text=p))
        else:
            value = struct_pb2.Value()
            json_format.ParseDict(p, value)
            msg.parts.append(pb.Part(data=value))
    return msg


async def only_event(stream: Any) -> pb.StreamResponse:
    events = [e async for e in stream]
    assert len(events) == 1, events
    return events[0]


def verify_artifact(task: pb.Task) -> dict[str, Any]:
    """Check the agent's signature from the artifact's metadata alone, and that it covers the artifact's data."""
    art = task.artifacts[0]
    meta = json_format.MessageToDict(art.metadata)["aicp"]
    key = base64.urlsafe_b64decode(meta["agent_key"].removeprefix("ed25519:") + "=")
    signed = base64.b64decode(meta["signed_bytes"])
    nacl.signing.VerifyKey(key).verify(signed, base64.b64decode(meta["signature"]))
    body = json.loads(signed[signed.index(b"\0") + 1 :])
    assert body["task_id"] == task.id and body["sender"] == meta["agent_id"]
    assert body["payload"] == json_format.MessageToDict(art.parts[0].data)
    return body


async def client_for(s: Stack, capability: str, streaming: bool, http: httpx.AsyncClient) -> Any:
    return await create_client(f"{s.gateway}/a2a/{capability}", ClientConfig(httpx_client=http, streaming=streaming))


def test_cards_are_built_live_from_the_registry(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=10) as http:
            card = await A2ACardResolver(http, f"{stack.gateway}/a2a/text.classify").get_agent_card()
            assert [s.id for s in card.skills] == ["text.classify"]
            assert card.capabilities.streaming
            assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "Bearer"
            assert card.supported_interfaces[0].url == f"{stack.gateway}/a2a/text.classify"
            assert card.supported_interfaces[0].protocol_binding == "JSONRPC" and card.supported_interfaces[0].protocol_version == "1.0"
            root = await A2ACardResolver(http, stack.gateway).get_agent_card()
            assert {"text.classify", "echo", "slow.work"} <= {s.id for s in root.skills}
            missing = await http.get(f"{stack.gateway}/a2a/nobody.has.this/.well-known/agent-card.json")
            assert missing.status_code == 404 and missing.json()["code"] == "not-found"

    run(go())


def test_send_message_returns_a_task_with_the_signed_result_as_artifact(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            client = await client_for(stack, "text.classify", False, http)
            events = [e async for e in client.send_message(pb.SendMessageRequest(message=message({"text": "terrible, it broke"})))]
            assert len(events) == 1 and events[0].HasField("task")
            task = events[0].task
            assert task.status.state == pb.TASK_STATE_COMPLETED
            body = verify_artifact(task)
            assert body["payload"]["label"] == "negative"
            again = await client.get_task(pb.GetTaskRequest(id=task.id))
            assert again.status.state == pb.TASK_STATE_COMPLETED and again.artifacts[0].metadata == task.artifacts[0].metadata
            # a text part is the payload as a string: echo returns it
            echoed = [e async for e in (await client_for(stack, "echo", False, http)).send_message(pb.SendMessageRequest(message=message("hello")))]
            assert json_format.MessageToDict(echoed[0].task.artifacts[0].parts[0].data) == "hello"

    run(go())


def test_streaming_gives_the_task_then_the_artifact_then_completed(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            client = await client_for(stack, "slow.work", True, http)
            events = [e async for e in client.send_message(pb.SendMessageRequest(message=message({"n": 7})))]
            kinds = [e.WhichOneof("payload") for e in events]
            assert kinds[0] == "task" and kinds[-2:] == ["artifact_update", "status_update"], kinds
            assert events[0].task.status.state in (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING)
            assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
            final = await client.get_task(pb.GetTaskRequest(id=events[0].task.id))
            verify_artifact(final)

    run(go())


def test_get_cancel_and_outcome_states(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            client = await client_for(stack, "slow.work", False, http)
            req = pb.SendMessageRequest(message=message({"n": 1}), configuration=pb.SendMessageConfiguration(return_immediately=True))
            task = (await only_event(client.send_message(req))).task
            assert task.status.state in (pb.TASK_STATE_SUBMITTED, pb.TASK_STATE_WORKING)
            canceled = await client.cancel_task(pb.CancelTaskRequest(id=task.id))
            assert canceled.status.state == pb.TASK_STATE_CANCELED
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(pb.CancelTaskRequest(id=task.id))
            with pytest.raises(TaskNotFoundError):
                await client.get_task(pb.GetTaskRequest(id="no-such-task"))
            with pytest.raises(UnsupportedOperationError):
                await client.list_tasks(pb.ListTasksRequest())
            # a task sent with a capability nobody serves is rejected; one past its deadline failed
            limited = httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKENS['limited']}"}, timeout=30)
            async with limited:
                rejected = await _rpc(limited, f"{stack.gateway}/a2a/nobody.has.this", "SendMessage", {"message": _msg_json("x")})
                assert rejected["result"]["task"]["status"]["state"] == "TASK_STATE_REJECTED"
                assert rejected["result"]["task"]["status"]["message"]["metadata"]["code"] == "no-agent"
            slow = pb.SendMessageRequest(message=message({"n": 2}))
            slow.metadata.update({"timeout_ms": 200})
            failed = (await only_event(client.send_message(slow))).task
            assert failed.status.state == pb.TASK_STATE_FAILED
            assert json_format.MessageToDict(failed.status.message.metadata)["code"] == "timeout"

    run(go())


def _msg_json(text: str) -> dict[str, Any]:
    return {"messageId": uuid.uuid4().hex, "role": "ROLE_USER", "parts": [{"text": text}]}


async def _rpc(http: httpx.AsyncClient, url: str, method: str, params: Any, raw: bytes | None = None) -> dict[str, Any]:
    content = raw if raw is not None else json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    r = await http.post(url, content=content, headers={"Content-Type": "application/json", "A2A-Version": "1.0"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_json_rpc_error_codes_and_http_auth(stack: Stack) -> None:
    url = f"{stack.gateway}/a2a/echo"

    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            assert (await _rpc(http, url, "", None, raw=b'{"jsonrpc": "2.0", "id": 1, "method": '))["error"]["code"] == -32700
            assert (await _rpc(http, url, "", None, raw=b'{"id": 1, "method": "SendMessage"}'))["error"]["code"] == -32600
            assert (await _rpc(http, url, "NoSuchMethod", {}))["error"]["code"] == -32601
            assert (await _rpc(http, url, "SendMessage", {"message": {"messageId": "m", "role": "ROLE_USER", "parts": []}}))["error"]["code"] == -32602
            assert (await _rpc(http, url, "SendMessage", {"message": "not an object"}))["error"]["code"] == -32602
            assert (await _rpc(http, url, "GetTask", {"id": "no-such-task"}))["error"]["code"] == -32001
            assert (await _rpc(http, url, "ListTasks", {}))["error"]["code"] == -32004
            ok = await _rpc(http, url, "SendMessage", {"message": _msg_json("still serving")})
            assert ok["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
            no_key = await http.post(url, json={}, headers={"Authorization": ""})
            assert no_key.status_code == 401 and no_key.json()["code"] == "unauthorized"
            bob = await http.post(f"{stack.gateway}/a2a/text.classify", json={}, headers={"Authorization": f"Bearer {TOKENS['bob']}"})
            assert bob.status_code == 403 and bob.json()["code"] == "forbidden"

    run(go())


def test_a_repeated_message_id_is_one_task(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            client = await client_for(stack, "echo", False, http)
            mid = uuid.uuid4().hex
            first = (await only_event(client.send_message(pb.SendMessageRequest(message=message({"a": 1}, message_id=mid))))).task
            second = (await only_event(client.send_message(pb.SendMessageRequest(message=message({"a": 1}, message_id=mid))))).task
            assert first.id == second.id and first.artifacts[0].metadata == second.artifacts[0].metadata

    run(go())


def test_the_root_endpoint_routes_by_metadata_skill(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            url = f"{stack.gateway}/a2a"
            ok = await _rpc(http, url, "SendMessage", {"message": _msg_json("via the root"), "metadata": {"skill": "echo"}})
            task = ok["result"]["task"]
            assert task["status"]["state"] == "TASK_STATE_COMPLETED" and task["metadata"]["method"] == "echo"
            assert task["artifacts"][0]["parts"][0]["data"] == "via the root"
            assert (await _rpc(http, url, "SendMessage", {"message": _msg_json("no skill")}))["error"]["code"] == -32602
            bob = httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKENS['bob']}"}, timeout=30)
            async with bob:
                refused = await _rpc(bob, url, "SendMessage", {"message": _msg_json("x"), "metadata": {"skill": "text.classify"}})
                assert refused["error"]["code"] == -32602 and refused["error"]["data"][0]["metadata"]["code"] == "forbidden"  # google.rpc.ErrorInfo

    run(go())


def test_subscribe_to_a_running_task_streams_its_end(stack: Stack) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers=stack.headers(), timeout=30) as http:
            client = await client_for(stack, "slow.work", True, http)
            req = pb.SendMessageRequest(message=message({"n": 3}), configuration=pb.SendMessageConfiguration(return_immediately=True))
            started = await client_for(stack, "slow.work", False, http)
            task = (await only_event(started.send_message(req))).task
            events = [e async for e in client.subscribe(pb.SubscribeToTaskRequest(id=task.id))]
            assert events[0].task.id == task.id
            assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
            verify_artifact(await client.get_task(pb.GetTaskRequest(id=task.id)))
            with pytest.raises(UnsupportedOperationError):  # it has ended: nothing left to stream
                [e async for e in client.subscribe(pb.SubscribeToTaskRequest(id=task.id))]

    run(go())
