"""Protocol test vectors: built here, written to docs/protocol-vectors.json, checked by the tests.

The file is one JSON object: what every field means (``fields``), the router the
peer-to-router vectors are judged by (``router``), and the ``vectors`` in order.
Every vector is a frame exactly as sent. Peer-to-router vectors are judged in
order by one router (seed ``ROUTER_SEED``, nonces from ``vector_nonce``); each
names its ``connection`` and the ``now`` it is judged at, the ``error`` code the
router answers with (``null``: accepted), and every frame the router sent in
response (``answers`` on the same connection, ``forwarded`` to others) and its
``close``. Router-to-peer vectors are frames that router signed: each
connection's challenge, a register-ack and error frames. Regenerate with
``python -m aicp.vectors > docs/protocol-vectors.json``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from msgspec import Raw

from aicp import errors
from aicp.messages import PROTOCOL_VERSION, Body, Heartbeat, Register, Result, Task, encode, payload
from aicp.protocol import Close, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import CONTEXT, Identity, decode_public_key, encode_public_key, encode_signature

ROUTER_SEED = bytes(range(32))
AGENT_SEED = bytes([1] * 32)
CONTROLLER_SEED = bytes([2] * 32)
OTHER_SEED = bytes([3] * 32)
NOW = 1_764_000_000.0
L = 2**252 + 27742317777372353535851937790883648493  # the Ed25519 group order

FIELDS: dict[str, str] = {
    "name": "a unique name",
    "note": "what the vector shows",
    "direction": "peer-to-router: a frame a peer sends, judged by the router; router-to-peer: a frame the router signed and sent",
    "connection": "the connection (numbered from 1) the frame travels on. The router opens connections in order, at now = NOW of the first vector, "
    "each when its first vector comes; connection N's challenge is the router-challenge-N vector",
    "now": "the router's clock (seconds since the Unix epoch) when it receives or sends the frame",
    "signer_seed_hex": "the SIGNER's 32-byte Ed25519 seed: the key that made signature_hex (not always the key the envelope names)",
    "signer_public_key": "the public key of signer_seed_hex, text form",
    "signer_signed_bytes_hex": "what the SIGNER signed: CONTEXT || the body bytes it encoded",
    "public_key": "the key the envelope names, text form: the key a VERIFIER checks with",
    "public_key_hex": "public_key as 32 raw bytes",
    "signed_bytes_hex": "what a VERIFIER computes from the frame: CONTEXT || the body bytes exactly as they appear in the frame. "
    "It differs from signer_signed_bytes_hex only when the body was changed after signing",
    "signature_hex": "the 64 bytes of the envelope's sig",
    "frame": "the exact text of the WebSocket frame",
    "valid": "true when the router accepts the frame (error is null), or for a router-to-peer frame",
    "error": "peer-to-router: the code of the error frame the router answers with, or null when it accepts the frame",
    "answers": "peer-to-router: every frame the router sent back on the same connection in response, in order (register-ack, error, a stored outcome, "
    "a progress notice)",
    "forwarded": "peer-to-router: frames the router sent on other connections in response, as {connection, frame}; a task or result appears byte for byte",
    "close": "peer-to-router: null, or {code, reason} when the router closed this connection after the answers",
}


def vector_nonce() -> Callable[[], str]:
    """The deterministic nonce source the vectors' router uses: nonce-0000..., nonce-0001...

    The router draws nonce-0000 at start for its message-id prefix (``r`` + its first 8
    characters + ``-``), so connection N gets ``nonce-000N-abcdefghijkl``.
    """
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


def body_of(frame: bytes) -> bytes:
    """The body bytes of a well-formed frame this package built (the envelope's last member)."""
    return frame[frame.index(b',"body":') + 8 : -1]


def _vector(name: str, seed: bytes, raw_body: bytes, *, sender: str, conn: int, now: float = NOW, error: str | None, note: str,
            signed: bytes | None = None, sig: bytes | None = None, key_text: str | None = None,
            direction: str = "peer-to-router") -> dict[str, Any]:
    """``signed``: the body bytes the signer signed, when not ``raw_body``; ``key_text``: the envelope's key, when not the signer's."""
    signer = Identity(seed)
    signed_body = raw_body if signed is None else signed
    signature = sig if sig is not None else signer.sign(signed_body)
    envelope_key = key_text if key_text is not None else signer.public_key_text
    return {
        "name": name,
        "note": note,
        "direction": direction,
        "connection": conn,
        "now": now,
        "signer_seed_hex": seed.hex(),
        "signer_public_key": signer.public_key_text,
        "signer_signed_bytes_hex": (CONTEXT + signed_body).hex(),
        "public_key": envelope_key,
        "public_key_hex": decode_public_key(envelope_key).hex(),
        "signed_bytes_hex": (CONTEXT + raw_body).hex(),
        "signature_hex": signature.hex(),
        "frame": _frame(sender, envelope_key, signature, raw_body).decode("utf-8"),
        "valid": error is None,
        "error": error,
    }


def _router_vector(name: str, frame: bytes, conn: int, now: float, note: str) -> dict[str, Any]:
    raw = body_of(frame)
    vec = _vector(name, ROUTER_SEED, raw, sender="router", conn=conn, now=now, error=None, note=note, direction="router-to-peer")
    assert vec["frame"].encode() == frame, name
    return vec


def _body(msg: Body) -> bytes:
    return encode(msg)


def _peer_vectors() -> list[dict[str, Any]]:
    """The peer-to-router vectors, in the order the router judges them."""
    agent, ctl, other = Identity(AGENT_SEED), Identity(CONTROLLER_SEED), Identity(OTHER_SEED)
    v = PROTOCOL_VERSION
    out: list[dict[str, Any]] = []

    def reg(ident: Identity, pid: str, role: str, nonce: str, mid: str, caps: list[str], ts: float = NOW, ephemeral: bool = False) -> bytes:
        return _body(Register(v=v, id=mid, sender=pid, ts=ts, nonce=nonce, role=role, key=ident.public_key_text, capabilities=caps,  # type: ignore[arg-type]
                              ephemeral=ephemeral))

    def nonce(conn: int) -> str:
        return f"nonce-{conn:04d}-abcdefghijkl"

    out.append(_vector("agent-register", AGENT_SEED, reg(agent, "agent-1", "agent", nonce(1), "m1", ["text.classify"]),
                       sender="agent-1", conn=1, error=None, note="registration signing connection 1's nonce; answered by register-ack"))
    out.append(_vector("controller-register", CONTROLLER_SEED, reg(ctl, "ctl-1", "controller", nonce(2), "m1", []),
                       sender="ctl-1", conn=2, error=None, note="a controller registers on connection 2 with no capabilities"))
    out.append(_vector("agent-heartbeat", AGENT_SEED, _body(Heartbeat(v=v, id="m2", sender="agent-1", ts=NOW + 1, load=0)),
                       sender="agent-1", conn=1, now=NOW + 1, error=None, note="renews agent-1's lease; no answer"))
    out.append(_vector("controller-heartbeat", CONTROLLER_SEED, _body(Heartbeat(v=v, id="h1", sender="ctl-1", ts=NOW + 1)),
                       sender="ctl-1", conn=2, now=NOW + 1, error=None, note="controllers may send heartbeats: checked like any frame, no effect, no answer (controllers hold no lease)"))
    task = Task(v=v, id="task-1", sender="ctl-1", ts=NOW + 2, method="text.classify", payload=payload({"text": "great product"}), timeout_ms=5000.0)
    task_raw = _body(task)
    out.append(_vector("controller-task", CONTROLLER_SEED, task_raw, sender="ctl-1", conn=2, now=NOW + 2, error=None,
                       note="admitted and forwarded byte for byte to agent-1 on connection 1"))
    result_raw = _body(Result(v=v, id="m3", sender="agent-1", ts=NOW + 2.01, task_id="task-1", requester="ctl-1", method="text.classify",
                              payload=payload({"label": "positive", "score": 0.93})))
    out.append(_vector("agent-result", AGENT_SEED, result_raw, sender="agent-1", conn=1, now=NOW + 2.01, error=None,
                       note="task-1's one outcome: forwarded byte for byte to ctl-1 on connection 2"))
    out.append(_vector("result-repeated", AGENT_SEED, result_raw, sender="agent-1", conn=1, now=NOW + 2.02, error=None,
                       note="the same result frame again: dropped silently (deduplicated), no answer"))
    out.append(_vector("task-resubmitted", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-1", sender="ctl-1", ts=NOW + 2.5, method="text.classify", payload=payload({"text": "great product"}))),
                       sender="ctl-1", conn=2, now=NOW + 2.5, error=None,
                       note="task-1 again, signed anew, same method and payload bytes: the stored outcome (agent-result's frame) is sent again; nothing runs"))
    out.append(_vector("task-id-conflict", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-1", sender="ctl-1", ts=NOW + 2.5, method="text.classify", payload=payload({"text": "awful product"}))),
                       sender="ctl-1", conn=2, now=NOW + 2.5, error=errors.ID_CONFLICT,
                       note="task-1 again with another payload: refused; the stored outcome stays task-1's"))
    out.append(_vector("result-not-assigned", AGENT_SEED,
                       _body(Result(v=v, id="m9", sender="agent-1", ts=NOW + 2.6, task_id="task-404", requester="ctl-1", method="text.classify", payload=payload(None))),
                       sender="agent-1", conn=1, now=NOW + 2.6, error=errors.NOT_ASSIGNED,
                       note="a result for a task the router never dispatched to agent-1 (here: no such task)"))
    out.append(_vector("task-no-agent", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-2", sender="ctl-1", ts=NOW + 2.7, method="translate", payload=payload("hola"))),
                       sender="ctl-1", conn=2, now=NOW + 2.7, error=errors.NO_AGENT,
                       note="admitted, and ended at once: no agent has 'translate'. This error is task-2's one outcome (kept, sent again on resubmission)"))
    out.append(_vector("task-stale-refused", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-3", sender="ctl-1", ts=NOW - 120, method="text.classify", payload=payload({"text": "ok"}))),
                       sender="ctl-1", conn=2, now=NOW + 2.8, error=errors.STALE,
                       note="refused before admission: the error carries task_id and method, but it is no outcome and task-3 stays free"))
    out.append(_vector("task-after-refusal", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-3", sender="ctl-1", ts=NOW + 2.9, method="text.classify", payload=payload({"text": "ok"}))),
                       sender="ctl-1", conn=2, now=NOW + 2.9, error=None,
                       note="task-3 sent again with a fresh ts after its stale refusal: admitted and forwarded to agent-1"))
    out.append(_vector("task-asks-progress", CONTROLLER_SEED,
                       _body(Task(v=v, id="task-4", sender="ctl-1", ts=NOW + 2.95, method="text.classify", payload=payload({"text": "fine"}), progress=True)),
                       sender="ctl-1", conn=2, now=NOW + 2.95, error=None,
                       note="progress: true on this one task (ctl-1 registered without progress): admitted, forwarded to agent-1, and answered "
                       "with a signed progress notice (dispatched to agent-1)"))
    hb2 = _body(Heartbeat(v=v, id="m4", sender="agent-1", ts=NOW + 3))
    out.append(_vector("duplicate-id", AGENT_SEED, _body(Heartbeat(v=v, id="m2", sender="agent-1", ts=NOW + 3)), sender="agent-1", conn=1,
                       now=NOW + 3, error=errors.DUPLICATE, note="a new heartbeat reusing id m2 inside the replay window"))
    out.append(_vector("stale-timestamp", AGENT_SEED, _body(Heartbeat(v=v, id="m5", sender="agent-1", ts=NOW - 120)), sender="agent-1", conn=1,
                       now=NOW + 3, error=errors.STALE, note="ts 123 s before now; the window is ±60 s"))
    out.append(_vector("future-timestamp-in-window", AGENT_SEED, _body(Heartbeat(v=v, id="m6", sender="agent-1", ts=NOW + 50)), sender="agent-1",
                       conn=1, now=NOW + 3, error=None, note="47 s ahead of the router's clock: inside the window, accepted"))
    tampered = task_raw.replace(b"great", b"grEat")
    out.append(_vector("tampered-payload", CONTROLLER_SEED, tampered, sender="ctl-1", conn=2, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       signed=task_raw, note="controller-task's signature over a body with one letter changed after signing: "
                       "signer_signed_bytes_hex is the original, signed_bytes_hex what a verifier computes"))
    wrong = _body(Heartbeat(v=v, id="m7", sender="agent-1", ts=NOW + 3))
    out.append(_vector("wrong-key", OTHER_SEED, wrong, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       key_text=agent.public_key_text, note="the envelope names agent-1's key (public_key), but OTHER's seed signed (signer_seed_hex)"))
    out.append(_vector("key-not-bound", OTHER_SEED, wrong, sender="agent-1", conn=1, now=NOW + 3, error=errors.KEY_MISMATCH,
                       note="a valid signature by a key that is not agent-1's"))
    out.append(_vector("other-key-and-bad-signature", OTHER_SEED, wrong, sender="agent-1", conn=1, now=NOW + 3, error=errors.KEY_MISMATCH,
                       signed=hb2, note="after registration both fail: another key AND a signature over other bytes. The envelope check "
                       "comes first (§4.3), so the code is key-mismatch"))
    sorted_raw = json.dumps(json.loads(hb2), sort_keys=True, separators=(",", ":")).encode()
    out.append(_vector("signature-over-reencoding", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       signed=sorted_raw, note="signed the key-sorted re-encoding (signer_signed_bytes_hex), sent the original bytes (signed_bytes_hex)"))
    good_sig = agent.sign(hb2)
    s = int.from_bytes(good_sig[32:], "little") + L
    out.append(_vector("non-canonical-signature", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.INVALID_SIGNATURE,
                       sig=good_sig[:32] + s.to_bytes(32, "little"), note="S + L: the same signature with S >= L, which must be refused"))
    out.append(_vector("unsupported-version", AGENT_SEED, hb2.replace(b'"v":"1.1"', b'"v":1'), sender="agent-1", conn=1, now=NOW + 3,
                       error=errors.UNSUPPORTED_VERSION, note='v = 1, as protocol 1.0 sent it: this router speaks "1.1" only; the connection stays open'))
    out.append(_vector("unknown-field", AGENT_SEED, hb2[:-1] + b',"extra":1}', sender="agent-1", conn=1, now=NOW + 3,
                       error=errors.INVALID_MESSAGE, note="bodies reject fields they do not define"))
    out.append(_vector("second-register", AGENT_SEED, reg(agent, "agent-1", "agent", nonce(1), "m8", ["text.classify"], NOW + 3),
                       sender="agent-1", conn=1, now=NOW + 3, error=errors.BAD_NONCE,
                       note="a new register on an already registered connection: its nonce is used up; refused, the connection stays open"))
    out.append(_vector("task-before-registration", CONTROLLER_SEED, _body(Task(v=v, id="task-9", sender="ctl-1", ts=NOW + 3, method="echo", payload=Raw(b"null"))),
                       sender="ctl-1", conn=3, now=NOW + 3, error=errors.AUTH_REQUIRED, note="a fresh connection 3 that never registered: error, then close 1008"))
    out.append(_vector("replayed-registration", AGENT_SEED, reg(agent, "agent-1", "agent", nonce(1), "m1", ["text.classify"]),
                       sender="agent-1", conn=4, now=NOW + 3, error=errors.BAD_NONCE, note="agent-register replayed on connection 4 (nonce-0004 expected)"))
    out.append(_vector("id-bound-to-other-key", OTHER_SEED, reg(other, "agent-1", "agent", nonce(5), "x1", ["echo"]),
                       sender="agent-1", conn=5, now=NOW + 3, error=errors.KEY_MISMATCH, note="agent-1 is bound to the first key that registered it"))
    # A small-order public key (the all-zero encoding) in both the envelope and the body, signed by agent-1's seed.
    small_text = encode_public_key(bytes(32))
    small_raw = _body(Register(v=v, id="y1", sender="agent-9", ts=NOW + 3, nonce=nonce(6), role="agent", key=small_text, capabilities=["echo"]))
    out.append(_vector("small-order-key", AGENT_SEED, small_raw, sender="agent-9", conn=6, now=NOW + 3, error=errors.INVALID_KEY, key_text=small_text,
                       note="a small-order public key (public_key) is refused at registration, before any signature check; the signature is by signer_seed_hex"))
    malformed = _vector("malformed-frame", AGENT_SEED, hb2, sender="agent-1", conn=1, now=NOW + 3, error=errors.MALFORMED, note="the frame cut short")
    malformed["frame"] = malformed["frame"][:-7]
    out.append(malformed)
    bound_bad = reg(other, "agent-1", "agent", nonce(7), "x2", ["echo"])
    out.append(_vector("bound-id-other-key-and-bad-signature", OTHER_SEED, bound_bad, sender="agent-1", conn=7, now=NOW + 3,
                       error=errors.INVALID_SIGNATURE, signed=bound_bad.replace(b'"x2"', b'"x3"'),
                       note="during registration both fail: agent-1 is bound to another key AND the signature is over other bytes. "
                       "The signature is checked before the binding (§4.3), so the code is invalid-signature"))
    out.append(_vector("register-as-router", OTHER_SEED, reg(other, "router", "agent", nonce(8), "x4", ["echo"]),
                       sender="router", conn=8, now=NOW + 3, error=errors.KEY_MISMATCH, note="the router's own id is bound to the router's key; no peer may register it"))
    out.append(_vector("old-version-registration", OTHER_SEED,
                       reg(other, "agent-7", "agent", nonce(9), "x5", ["echo"]).replace(b'"v":"1.1"', b'"v":1'),
                       sender="agent-7", conn=9, now=NOW + 3, error=errors.UNSUPPORTED_VERSION, note="a protocol 1.0 peer registering: error, then close 1008"))
    out.append(_vector("ephemeral-controller-register", OTHER_SEED, reg(other, "controller-5e1f", "controller", nonce(10), "x6", [], NOW + 3, ephemeral=True),
                       sender="controller-5e1f", conn=10, now=NOW + 3, error=None,
                       note="a controller with a made-up id registers it as ephemeral (§4.4): bound while connected, freed window_s after it leaves"))
    out.append(_vector("ephemeral-agent-register", OTHER_SEED, reg(other, "agent-8", "agent", nonce(11), "x7", ["echo"], NOW + 3, ephemeral=True),
                       sender="agent-8", conn=11, now=NOW + 3, error=errors.INVALID_MESSAGE,
                       note="only a controller registers an ephemeral id (§8 H12): error, then close 1008"))
    return out


def _replay(vectors: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[tuple[int, bytes]], list[Send | Close]]]:
    """Judge peer-to-router vectors in order through one router; returns each with the challenges it
    caused (connections opened for it) and the router's outputs."""
    proto = make_router()
    opened = 0
    out: list[tuple[dict[str, Any], list[tuple[int, bytes]], list[Send | Close]]] = []
    for vec in vectors:
        challenges: list[tuple[int, bytes]] = []
        while opened < vec["connection"]:  # open connections in order so nonces line up
            opened += 1
            [ch] = proto.connection_made(opened, NOW)
            assert isinstance(ch, Send)
            challenges.append((opened, ch.data))
        if vec["direction"] != "peer-to-router":
            out.append((vec, challenges, []))
            continue
        out.append((vec, challenges, proto.frame_received(vec["connection"], vec["frame"].encode(), vec["now"])))
    return out


def outcome_of(vec: dict[str, Any], outputs: list[Send | Close]) -> dict[str, Any]:
    """What the router did with a peer-to-router vector, in the vectors' own terms."""
    conn = vec["connection"]
    error = None
    answers, forwarded, close = [], [], None
    for o in outputs:
        if isinstance(o, Send) and o.conn == conn:
            answers.append(o.data.decode())
            body = json.loads(body_of(o.data))
            if body["type"] == "error" and error is None:
                error = body["code"]
        elif isinstance(o, Send):
            forwarded.append({"connection": o.conn, "frame": o.data.decode()})
        elif o.conn == conn:
            close = {"code": o.code, "reason": o.reason}
    return {"error": error, "answers": answers, "forwarded": forwarded, "close": close}


def build() -> dict[str, Any]:
    peer = _peer_vectors()
    vectors: list[dict[str, Any]] = []
    for vec, challenges, outputs in _replay(peer):
        for conn, frame in challenges:
            vectors.append(_router_vector(f"router-challenge-{conn}", frame, conn, NOW,
                                          f"the first frame on connection {conn}; the peer signs body.nonce in its registration"))
        judged = outcome_of(vec, outputs)
        assert judged["error"] == vec["error"], (vec["name"], judged["error"])
        vectors.append({**vec, "answers": judged["answers"], "forwarded": judged["forwarded"], "close": judged["close"]})
        if vec["name"] in ("agent-register", "stale-timestamp", "task-no-agent", "task-asks-progress"):
            [answer] = judged["answers"]
            kind = {"agent-register": "register-ack", "stale-timestamp": "error", "task-no-agent": "error", "task-asks-progress": "progress"}[vec["name"]]
            vectors.append(_router_vector(f"router-{kind}-for-{vec['name']}", answer.encode(), vec["connection"], vec["now"],
                                          f"the router's {kind} answering {vec['name']}"))
    router = Identity(ROUTER_SEED)
    return {
        "protocol": PROTOCOL_VERSION,
        "context_hex": CONTEXT.hex(),
        "router": {
            "id": "router",
            "seed_hex": ROUTER_SEED.hex(),
            "public_key": router.public_key_text,
            "config": "defaults: window_s 60, heartbeat_s 30, lease_s 90, strategy round_robin",
            "nonces": "connection N's challenge nonce is nonce-000N-abcdefghijkl; a real router sends 32 random base64url characters",
        },
        "fields": FIELDS,
        "vectors": vectors,
    }


def judge(document: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Replay the peer-to-router vectors of a vectors document through a fresh router: (vector, what it did)."""
    peer = [v for v in document["vectors"] if v["direction"] == "peer-to-router"]
    return [(vec, outcome_of(vec, outputs)) for vec, _, outputs in _replay(peer)]


def main() -> None:
    print(json.dumps(build(), indent=2))


if __name__ == "__main__":
    main()
