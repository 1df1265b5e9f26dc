"""Identity files, the public-key text form, and detached signatures over CONTEXT + body."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.signing
import pytest

from aicp import errors, signing
from aicp.signing import Identity


def test_identity_round_trips_through_a_0600_file(tmp_path: Path) -> None:
    ident = Identity.generate()
    path = tmp_path / "keys" / "agent.key"
    ident.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load(path)
    assert again.public_key == ident.public_key
    assert again.sign(b"x") == ident.sign(b"x")  # Ed25519 signatures are deterministic


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(errors.LocalError, match="chmod 600"):
        Identity.load(path)


def test_load_or_create_creates_once_then_reuses(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = Identity.load_or_create(path)
    assert Identity.load_or_create(path).public_key == first.public_key


def test_public_key_text_form_is_canonical() -> None:
    ident = Identity(bytes(range(32)))
    text = ident.public_key_text
    assert text.startswith("ed25519:") and len(text) == 8 + 43
    assert signing.decode_public_key(text) == ident.public_key
    # the last character carries two unused bits: a variant with them set decodes to the same
    # bytes in lenient decoders, and must be refused here
    last = text[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = text[:-1] + alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(errors.VerifyError) as exc:
        signing.decode_public_key(variant)
    assert exc.value.code == errors.INVALID_KEY


@pytest.mark.parametrize("body", ["7Ukox" + "#" * 2 + "A" * 36, "A" * 42 + "=", "A" * 21 + " " + "A" * 21, "A" * 42 + "\u00e9"])
def test_a_public_key_with_characters_outside_base64url_is_an_invalid_key_error(body: str) -> None:
    # urlsafe_b64decode skips characters outside its alphabet and returns fewer than 32 bytes:
    # found by test_fuzz (a '#' in the key raised LocalError from the re-encoding, not INVALID_KEY)
    assert len(body) == 43
    with pytest.raises(errors.VerifyError) as exc:
        signing.decode_public_key("ed25519:" + body)
    assert exc.value.code == errors.INVALID_KEY


def test_signature_covers_the_context_so_a_bare_body_signature_fails() -> None:
    ident = Identity.generate()
    body = b'{"type":"heartbeat"}'
    signing.verify(ident.public_key, body, ident.sign(body))
    bare = nacl.signing.SigningKey(ident.seed).sign(body).signature
    with pytest.raises(errors.VerifyError) as exc:
        signing.verify(ident.public_key, body, bare)
    assert exc.value.code == errors.INVALID_SIGNATURE
