"""docs/protocol-vectors.json: regenerated identically, independently verifiable, judged as documented."""

from __future__ import annotations

import json
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest

from aicp import errors, signing
from aicp.messages import PROTOCOL_VERSION, Error, decode_body, decode_frame, seal_raw
from aicp.vectors import FIELDS, ROUTER_SEED, body_of, build, judge

VECTORS_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol-vectors.json"
DOCUMENT = json.loads(VECTORS_PATH.read_text())
VECTORS = DOCUMENT["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
PEER_ONLY = {"error", "answers", "forwarded", "close"}
ROUTER_KEY = signing.Identity(ROUTER_SEED).public_key_text


def _libsodium_ok(key_hex: str, signed_hex: str, sig_hex: str) -> bool:
    try:
        nacl.signing.VerifyKey(bytes.fromhex(key_hex)).verify(bytes.fromhex(signed_hex), bytes.fromhex(sig_hex))
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def test_file_matches_the_generator() -> None:
    assert build() == DOCUMENT, "regenerate: python -m aicp.vectors > docs/protocol-vectors.json"


def test_the_document_names_its_version_context_router_and_every_field() -> None:
    assert DOCUMENT["protocol"] == PROTOCOL_VERSION
    assert bytes.fromhex(DOCUMENT["context_hex"]) == signing.CONTEXT
    assert DOCUMENT["router"]["public_key"] == ROUTER_KEY
    for vec in VECTORS:
        expected = set(FIELDS) if vec["direction"] == "peer-to-router" else set(FIELDS) - PEER_ONLY | {"error"}
        assert set(vec) == expected, vec["name"]
        assert vec["valid"] == (vec["error"] is None)
        assert vec["error"] is None or vec["error"] in errors.ALL_CODES
    assert set(DOCUMENT["fields"]) == set(FIELDS)


def test_the_cases_an_implementer_asked_for_are_there() -> None:
    names = set(BY_NAME)
    assert {"tampered-payload", "wrong-key", "stale-timestamp", "duplicate-id", "other-key-and-bad-signature",
            "bound-id-other-key-and-bad-signature", "task-id-conflict", "result-not-assigned", "task-after-refusal",
            "second-register", "register-as-router", "old-version-registration", "task-asks-progress"} <= names
    challenges = [v for v in VECTORS if v["name"].startswith("router-challenge-")]
    assert sorted(v["connection"] for v in challenges) == list(range(1, max(v["connection"] for v in VECTORS) + 1))
    types = {decode_body(body_of(v["frame"].encode())).__struct_config__.tag for v in VECTORS if v["direction"] == "router-to-peer"}
    assert {"challenge", "register-ack", "error", "progress"} <= types
    # the signer's and the verifier's views differ where the issue said they silently did
    for name in ("tampered-payload", "signature-over-reencoding", "other-key-and-bad-signature"):
        assert BY_NAME[name]["signer_signed_bytes_hex"] != BY_NAME[name]["signed_bytes_hex"], name
    for name in ("wrong-key", "small-order-key"):
        assert BY_NAME[name]["signer_public_key"] != BY_NAME[name]["public_key"], name


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_signed_bytes_are_context_plus_the_body_bytes_of_the_frame(vec: dict) -> None:
    frame = vec["frame"].encode()
    signed = bytes.fromhex(vec["signed_bytes_hex"])
    assert signed.startswith(signing.CONTEXT) and bytes.fromhex(vec["signer_signed_bytes_hex"]).startswith(signing.CONTEXT)
    body = signed[len(signing.CONTEXT) :]
    if vec["error"] != errors.MALFORMED:
        assert frame.endswith(b',"body":' + body + b"}")
        assert json.loads(frame)["key"] == vec["public_key"]
    assert signing.encode_public_key(bytes.fromhex(vec["public_key_hex"])) == vec["public_key"]
    assert signing.Identity(bytes.fromhex(vec["signer_seed_hex"])).public_key_text == vec["signer_public_key"]


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["name"] != "non-canonical-signature"], ids=lambda v: v["name"])
def test_the_signer_fields_reproduce_the_signature(vec: dict) -> None:
    """From the signer's side: its seed over its bytes gives exactly signature_hex."""
    signer = signing.Identity(bytes.fromhex(vec["signer_seed_hex"]))
    signed = bytes.fromhex(vec["signer_signed_bytes_hex"])
    assert signer.sign(signed[len(signing.CONTEXT) :]).hex() == vec["signature_hex"]
    pub = signing.decode_public_key(vec["signer_public_key"]).hex()
    assert _libsodium_ok(pub, vec["signer_signed_bytes_hex"], vec["signature_hex"])


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["valid"]], ids=lambda v: v["name"])
def test_valid_vectors_verify_with_plain_libsodium(vec: dict) -> None:
    assert _libsodium_ok(vec["public_key_hex"], vec["signed_bytes_hex"], vec["signature_hex"])
    # and the frame is exactly what this package's encoder produces for that body
    ident = signing.Identity(bytes.fromhex(vec["signer_seed_hex"]))
    body = bytes.fromhex(vec["signed_bytes_hex"])[len(signing.CONTEXT) :]
    sender = json.loads(vec["frame"])["sender"]
    assert seal_raw(ident, sender, body).decode() == vec["frame"]


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["error"] == errors.INVALID_SIGNATURE], ids=lambda v: v["name"])
def test_invalid_signature_vectors_fail_plain_libsodium(vec: dict) -> None:
    assert not _libsodium_ok(vec["public_key_hex"], vec["signed_bytes_hex"], vec["signature_hex"])


def test_router_judges_every_vector_as_documented_and_forwards_verbatim() -> None:
    judged = judge(DOCUMENT)
    assert len(judged) == sum(v["direction"] == "peer-to-router" for v in VECTORS)
    for vec, did in judged:
        assert did == {k: vec[k] for k in PEER_ONLY}, vec["name"]
    # the task reaches the agent and the result reaches the controller byte for byte
    assert BY_NAME["controller-task"]["forwarded"] == [{"connection": 1, "frame": BY_NAME["controller-task"]["frame"]}]
    assert BY_NAME["agent-result"]["forwarded"] == [{"connection": 2, "frame": BY_NAME["agent-result"]["frame"]}]
    # a resubmission gets the stored outcome, byte for byte; a task refused before admission runs when sent again
    assert BY_NAME["task-resubmitted"]["answers"] == [BY_NAME["agent-result"]["frame"]]
    assert BY_NAME["task-after-refusal"]["forwarded"] == [{"connection": 1, "frame": BY_NAME["task-after-refusal"]["frame"]}]


@pytest.mark.parametrize("vec", [v for v in VECTORS if v["direction"] == "peer-to-router"], ids=lambda v: v["name"])
def test_answers_are_router_signed_and_follow_the_close_and_task_id_rules(vec: dict) -> None:
    registered_conns = {BY_NAME["agent-register"]["connection"], BY_NAME["controller-register"]["connection"]}
    for text in vec["answers"]:
        frame = decode_frame(text.encode())
        if text == BY_NAME["agent-result"]["frame"]:  # a stored outcome sent again: the agent's own frame
            continue
        assert frame.sender == "router" and frame.key == ROUTER_KEY
        signing.verify(signing.decode_public_key(frame.key), frame.body, signing.decode_signature(frame.sig))
        body = decode_body(frame.body)
        if isinstance(body, Error):
            # ref, task_id and method come from the refused body when it decodes as a valid body, else they are absent
            try:
                refused = decode_body(body_of(vec["frame"].encode()))
            except (errors.ProtocolError, ValueError):
                refused = None
            assert body.ref == (refused.id if refused is not None else None)
            is_task = refused is not None and refused.__struct_config__.tag == "task"
            assert (body.task_id is not None) == is_task and (body.method is not None) == is_task
    if vec["error"] is not None and vec["connection"] not in registered_conns:
        assert vec["close"] == {"code": 1008, "reason": vec["error"]}
    else:
        assert vec["close"] is None
