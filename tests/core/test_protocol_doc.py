"""docs/PROTOCOL.md must describe what the code does: codes, kinds, tags, context bytes, version, endpoints."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from aicp import errors, messages, signing

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


def test_every_error_code_is_in_the_table_and_no_other() -> None:
    rows = re.findall(r"^\| `([a-z-]+)` \| ([a-z —-]+?) \|", section("9. Error codes"), flags=re.M)
    assert {code for code, _ in rows} == set(errors.ALL_CODES)
    assert len(rows) == len(errors.ALL_CODES)


def test_the_table_says_which_codes_are_outcomes_as_the_code_does() -> None:
    kinds = dict(re.findall(r"^\| `([a-z-]+)` \| ([a-z —-]+?) \|", section("9. Error codes"), flags=re.M))
    outcomes = {code for code, kind in kinds.items() if "outcome" in kind}
    assert outcomes == set(errors.OUTCOME_CODES)
    assert kinds[errors.SHUTTING_DOWN] == "refusal or outcome"


def test_every_body_type_is_documented() -> None:
    tags = {cls.__struct_config__.tag for cls in typing.get_args(messages.AnyBody)}
    for tag in tags:
        assert f"| `{tag}` |" in DOC, tag


def test_context_bytes_and_version_are_spelled_out() -> None:
    assert signing.CONTEXT.hex(" ") in DOC
    assert f"({len(signing.CONTEXT)} bytes" in DOC
    assert DOC.startswith(f"# The AICP wire protocol, version {messages.PROTOCOL_VERSION}\n")
    assert f'exactly `"{messages.PROTOCOL_VERSION}"`' in DOC


def test_every_close_code_the_code_uses_is_in_the_close_table() -> None:
    from aicp import protocol

    table = set(map(int, re.findall(r"^\| (\d{4}) \|", section("10. Close codes"), flags=re.M)))
    used = {v for k, v in vars(protocol).items() if k.startswith("CLOSE_") and isinstance(v, int)}
    assert used <= table
    assert {1003, 1007, 1008, 1009, 1011, 1013, 4000, 4001} <= table


def test_agents_endpoint_fields_are_documented() -> None:
    import random

    from aicp.protocol import RouterProtocol
    from aicp.router import Router

    proto = RouterProtocol(signing.Identity.generate(), Router(rng=random.Random(0)))
    proto.router.register_agent("a1", ["m"], 0.0)
    doc = proto.agents_document()
    text = section("11. HTTP endpoints")
    for key in doc:
        assert f'"{key}"' in text, key
    [agent] = doc["agents"]  # type: ignore[misc]
    for key in agent:
        assert f"`{key}`" in text, key
