"""docs/PROTOCOL.md must describe what the code does: codes, tags, context bytes."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from aicp import errors, messages, signing

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def test_every_error_code_is_in_the_table_and_no_other() -> None:
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", DOC, flags=re.M))
    documented -= {tag for tag in documented if tag in {"challenge", "register", "register-ack", "heartbeat", "task", "result", "error", "progress", "deregister", "goaway", "sender", "key", "sig", "body", "type", "v", "id", "ts"}}
    assert documented == set(errors.ALL_CODES)


def test_every_body_type_is_documented() -> None:
    tags = {cls.__struct_config__.tag for cls in typing.get_args(messages.AnyBody)}
    for tag in tags:
        assert f"| `{tag}` |" in DOC, tag


def test_context_bytes_are_spelled_out() -> None:
    assert signing.CONTEXT.hex(" ") in DOC
    assert f"({len(signing.CONTEXT)} bytes" in DOC
