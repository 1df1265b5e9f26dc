"""Protocol test vectors: built here, written to docs/protocol-vectors.json, checked by the tests.

Every vector is a frame exactly as sent, with the seed that signed it. Peer-to-router
vectors are judged in order by one router (seed ``ROUTER_SEED``) whose nonces come from
``vector_nonce``; each names its ``connection`` and the ``now`` it is judged at, and
``error`` is the code the router answers with (``null``: accepted). Regenerate with
``python -m aicp.vectors > docs/protocol-vectors.json``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from msgspec import Raw

from aicp import errors
from aicp.messages import PROTOCOL_VERSION, Body, Heartbeat, Register, Result, Task, encode, payload
from aicp.protocol import ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import CONTEXT, Identity, encode_public_key, encode_signature

ROUTER_SEED = bytes(range(32))
AGENT_SEED = bytes([1] * 32)
CONTROLLER_SEED = bytes([2] * 32)
OTHER_SEED = bytes([3] * 32)
NOW = 1_764_000_000.0
L = 2**252 + 27742317777372353535851937790883648493  # the Ed25519 group order


def vector_nonce() -> Callable[[], str]:
    """The deterministic nonce source the vectors' router uses: nonce-0000..., nonce-0001..."""
    counter = iter(range(10**9))
    return lambda: f"nonce-{next(counter):04d}-abcdefghijkl"


def make_router() -> RouterProtocol:
    return RouterProtocol(
        Identity(ROUTER_SEED),
        Router(RouterConfig(), "round_robin", random.Random(0)),
        ProtocolConfig(router_id="router"),
        nonce_source=vector_nonce(),
    )


def _frame(sender: str, key_text: str, sig: bytes, raw_body: bytes) -> bytes:
    return b'{"sender":' + encode(sender) + b',"key":' + encode(key_text) + b',"sig":' + encode(encode_signature(sig)) + b',"body":' + raw_body + b"}"


def _vector(name: str, seed: bytes, raw_body: bytes, *, sender: str, conn: int, now: float = NOW, error: str | None, note: str,
            sig: bytes | None = None, key_from: bytes | None = None, direction: str = "peer-to-router") -> dict[str, Any]:
    ident = Identity(seed)
    key_ident = Identity(key_from) if key_from is not None else ident
    signature = sig if sig is not None else ident.sign(raw_body)
    return {
        "name": name,
        "note": note,
        "direction": direction,
        "connection": conn,
        "now": now,
        "seed_hex": seed.hex(),
        "public_key": key_ident.public_key_text,
        "public_key_hex": key_ident.public_key.hex(),
        "signed_bytes_hex": (CONTEXT + raw_body).hex(),
        "signature_hex": signature.hex(),
        "frame": _frame(sender, key_ident.public_key_text, signature, raw_body).decode("utf-8"),
        "valid": error is None,
        "error": error,
    }


def _body(msg: Body) -> bytes:
    return encode(msg)


def build() -> list[dict[str, Any]]:
    agent, ctl = Identity(AGENT_SEED), Identity(CONTROLLER_SEED)
    v = PROTOCOL_VERSION
    out: list[dict[str, Any]] = []
    # The router's challenge on connection 1 (what a peer receives first).
    proto = make_router()
    [challenge] = proto.connection_made(1, NOW)
    assert isinstance(challenge, Send)
    ch = json.loads(challenge.data)
    ch_body = challenge.data[challenge.data.index(b'"body":') + 7 : -1]
    out.append(_vector("router-challenge", ROUTER_SEED, ch_body, sender="router", conn=1, error=None, direction="router-to-peer",
                       note="first frame on connection 1; the peer signs body.nonce in its registration"))
    assert ch["body"]["nonce"] == "nonce-0001-abcdefghijkl"

    def reg(ident: Identity, pid: str, role: str, nonce: str, mid: str, caps: list[str], ts: float = NOW) -> bytes:
        return _body(Register(v=v, id=mid, sender=pid, ts=ts, nonce=nonce, role=role, key=ident.public_key_text, capabilities=caps))  # type: ignore[arg-type]

    out.append(_vector("agent-register", AGENT_SEED, reg(agent, "agent-1", "agent", "nonce-0001-abcdefghijkl", "m1", ["text.classify"]),
                       sender="agent-1", conn=1, error=None, note="registration signing connection 1's nonce; answered by register-ack"))
    out.append(_vector("controller-register", CONTROLLER_SEED, reg(ctl, "ctl-1", "controller", "nonce-0002-abcdefghijkl", "m1", []),
                       sender="ctl-1", conn=2, error=None, note="a controller registers on connection 2 with no capabilities"))
    out.append(_vector("agent-heartbeat", AGENT_SEED, _body(Heartbeat(v=v, id="m2", sender="agent-1", ts=NOW + 1, load=0)),
                       sender="agent-1", conn=1, now=NOW + 1, error=None, note="renews agent-1's lease"))
    task = Task(v=v, id="task-1", sender="ctl-1", ts=NOW + 2, method="text.classify", payload=payload({"text": "great product"}), timeout_ms=5000.0)
    task_raw = _body(task)
    out.append(_vector("controller-task", CONTROLLER_SEED, task_raw, sender="ctl-1", conn=2, now=NOW + 2, error=None,
                       note="forwarded byte for byte to agent-1 on connection 1"))
    result_raw = _body(Result(v=v, id="m3", sender="agent-1", ts=NOW + 2.01, task_id="task-1", requester="ctl-1", method="text.classify",
                              payload=payload({"label": "positive", "score": 0.93})))
    out.append(_vector("agent-result", AGENT_SEED, result_raw, sender="agent-1", conn=1, now=NOW + 2.01, error=None,
                       note="forwarded byte for byte to ctl-1 on connection 2"))
    hb2 = _body(Heartbeat(v=v, id="m4", sender="agent-1", ts=NOW + 3))
    out.append(_vector("duplicate-id", AGENT_SEED, _body(Heartbeat(v=v, id="m2", sender="agent-1", ts=NOW + 3)), sender="agent-1", conn=1,
                       now=NOW + 3, error=errors.DUPLICATE, note="a new heartbeat reusing id m2 inside the replay window"))
    out.append(_vector("stale-timestamp", AGENT_SEED, _body(Heartbeat(v=v, id="m5", sender="agent-1", ts=NOW - 120)), sender="agent-1", conn=1,
                       now=NOW + 3, error=errors.STALE, note="ts 123 s before now; the window is ±60 s"))
    out.append(_vector("future-timestamp-in-window", AGENT_SEED, _body(Heartbeat(v=v, id="m6", sender="agent-1", ts=NOW + 50)), sender="agent-1",
                       conn=1, now=NOW + 3, error=None, note="47 s ahead of the router's clock: inside the window, accepted"))
    tampered = task_raw.replace(b"great", b"grEat")
    out.append(_vector("tampered-payload", CONTROLLER_SEED, tampered, sender="ctl-1", conn=2, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       sig=Identity(CONTROLLER_SEED).sign(task_raw), note="controller-task's signature over a body with one letter changed"))
    wrong = _body(Heartbeat(v=v, id="m7", sender="agent-1", ts=NOW + 3))
    out.append(_vector("wrong-key", OTHER_SEED, wrong, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       key_from=AGENT_SEED, note="envelope names agent-1's key but another key signed"))
    out.append(_vector("key-not-bound", OTHER_SEED, wrong, sender="agent-1", conn=1, now=NOW + 3, error=errors.KEY_MISMATCH,
                       note="a valid signature by a key that is not agent-1's"))
    sorted_raw = json.dumps(json.loads(hb2), sort_keys=True, separators=(",", ":")).encode()
    out.append(_vector("signature-over-reencoding", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       sig=Identity(AGENT_SEED).sign(sorted_raw), note="signed the key-sorted re-encoding, sent the original bytes"))
    good_sig = agent.sign(hb2)
    s = int.from_bytes(good_sig[32:], "little") + L
    out.append(_vector("non-canonical-signature", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       sig=good_sig[:32] + s.to_bytes(32, "little"), note="S + L: the same signature with S >= L, which must be refused"))
    out.append(_vector("unsupported-version", AGENT_SEED, hb2.replace(b'"v":1', b'"v":2'), sender="agent-1", conn=1, now=NOW + 3,
                       error=errors.UNSUPPORTED_VERSION, note="v = 2"))
    out.append(_vector("unknown-field", AGENT_SEED, hb2[:-1] + b',"extra":1}', sender="agent-1", conn=1, now=NOW + 3,
                       error=errors.INVALID_MESSAGE, note="bodies reject fields they do not define"))
    out.append(_vector("task-before-registration", CONTROLLER_SEED, _body(Task(v=v, id="task-9", sender="ctl-1", ts=NOW + 3, method="echo", payload=Raw(b"null"))),
                       sender="ctl-1", conn=3, now=NOW + 3, error=errors.AUTH_REQUIRED, note="a fresh connection 3 that never registered"))
    out.append(_vector("replayed-registration", AGENT_SEED, reg(agent, "agent-1", "agent", "nonce-0001-abcdefghijkl", "m1", ["text.classify"]),
                       sender="agent-1", conn=4, now=NOW + 3, error=errors.BAD_NONCE, note="agent-register replayed on connection 4 (nonce-0004 expected)"))
    out.append(_vector("id-bound-to-other-key", OTHER_SEED, reg(Identity(OTHER_SEED), "agent-1", "agent", "nonce-0005-abcdefghijkl", "x1", ["echo"]),
                       sender="agent-1", conn=5, now=NOW + 3, error=errors.KEY_MISMATCH, note="agent-1 is bound to the first key that registered it"))
    # A small-order public key (the all-zero encoding) in both the envelope and the body.
    small_text = encode_public_key(bytes(32))
    small_raw = _body(Register(v=v, id="y1", sender="agent-9", ts=NOW + 3, nonce="nonce-0006-abcdefghijkl", role="agent", key=small_text, capabilities=["echo"]))
    small = _vector("small-order-key", AGENT_SEED, small_raw, sender="agent-9", conn=6, now=NOW + 3, error=errors.INVALID_KEY,
                    note="a small-order public key is refused at registration, before any signature check")
    small["public_key"], small["public_key_hex"] = small_text, bytes(32).hex()
    small["frame"] = _frame("agent-9", small_text, agent.sign(small_raw), small_raw).decode()
    out.append(small)
    out.append({**_vector("malformed-frame", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.MALFORMED,
                          note="the frame cut short"), "frame": _frame("agent-1", agent.public_key_text, agent.sign(hb2), hb2).decode()[:-7]})
    return out


def judge(vectors: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str | None, list[bytes]]]:
    """Replay peer-to-router vectors in order through one router; yield each with the code it got."""
    proto = make_router()
    opened: set[int] = set()
    for vec in vectors:
        conn = vec["connection"]
        if conn not in opened:
            while len(opened) < conn:  # open connections in order so nonces line up
                opened.add(len(opened) + 1)
                proto.connection_made(len(opened), NOW)
        if vec["direction"] != "peer-to-router":
            yield vec, None, []
            continue
        outs = proto.frame_received(conn, vec["frame"].encode(), vec["now"])
        sent = [o.data for o in outs if isinstance(o, Send)]
        code = None
        for out in outs:  # the router's answer is an error frame back on the same connection
            if isinstance(out, Send) and out.conn == conn:
                body = json.loads(out.data)["body"]
                if body["type"] == "error":
                    code = body["code"]
        yield vec, code, sent


def main() -> None:
    print(json.dumps(build(), indent=2))


if __name__ == "__main__":
    main()
