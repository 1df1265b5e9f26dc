"""Ed25519 identities, the public-key text encoding, and detached signatures.

A signature covers ``CONTEXT + body`` where ``body`` is the exact bytes of the
frame's ``body`` value as sent. ``CONTEXT`` separates AICP signatures from any
other use of the same key (domain separation).

Public keys have one text form: ``ed25519:`` followed by the 32 raw key bytes in
unpadded base64url (43 characters).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Final

import nacl.bindings as _sodium
import nacl.signing
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from aicp import errors

CONTEXT: Final = b"AICP-v1 signed body\x00"
KEY_PREFIX: Final = "ed25519:"
SIGNATURE_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
SEED_BYTES: Final = 32


def encode_public_key(raw: bytes) -> str:
    """Raw 32-byte public key to its one text form."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise errors.LocalError(f"a public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_BASE64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def decode_public_key(text: str) -> bytes:
    """Text form to raw bytes; rejects anything but the one canonical encoding."""
    if not text.startswith(KEY_PREFIX):
        raise errors.VerifyError(errors.INVALID_KEY, "public key must start with 'ed25519:'")
    body = text[len(KEY_PREFIX) :]
    if len(body) != 43:
        raise errors.VerifyError(errors.INVALID_KEY, "public key must be 43 base64url characters")
    if not _BASE64URL.issuperset(body):  # urlsafe_b64decode would skip other characters and return fewer bytes
        raise errors.VerifyError(errors.INVALID_KEY, "public key is not base64url")
    try:
        raw = base64.urlsafe_b64decode(body + "=")
    except (binascii.Error, ValueError) as exc:
        raise errors.VerifyError(errors.INVALID_KEY, "public key is not base64url") from exc
    if len(raw) != PUBLIC_KEY_BYTES or encode_public_key(raw) != text:  # rejects non-zero padding bits
        raise errors.VerifyError(errors.INVALID_KEY, "public key is not canonically encoded")
    return raw


def check_public_key(raw: bytes) -> None:
    """Refuse keys no honest party has: small-order or non-canonical points."""
    if len(raw) != PUBLIC_KEY_BYTES or not _sodium.crypto_core_ed25519_is_valid_point(raw):
        raise errors.VerifyError(errors.INVALID_KEY, "public key is not a valid Ed25519 point")


def encode_signature(sig: bytes) -> str:
    return binascii.b2a_base64(sig, newline=False).decode("ascii")  # what base64.b64encode returns, without its wrapper


def decode_signature(text: str) -> bytes:
    """The 64 bytes of a signature's one text form: 88 characters of padded standard base64.

    ``a2b_base64(strict_mode=True)`` is what ``base64.b64decode(validate=True)`` calls, and
    ``b2a_base64`` what ``b64encode`` does, without their Python wrappers (run for every frame).
    """
    if len(text) != 88:
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature must be 88 base64 characters")
    try:
        data = text.encode("ascii")
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature is not base64") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature must be 64 bytes")
    if binascii.b2a_base64(raw, newline=False) != data:  # non-zero padding bits: one signature, one text form
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature is not canonically encoded")
    return raw


def verify(public_key: bytes, body: bytes, signature: bytes) -> None:
    """Raise ``VerifyError(invalid-signature)`` unless ``signature`` covers CONTEXT+body.

    libsodium's verifier rejects non-canonical S (S >= L) and small-order keys. It is
    libsodium's ``crypto_sign_open``, as PyNaCl's wrapper calls it, but with no output
    buffer: libsodium then only verifies (``m`` and ``mlen_p`` may be NULL), so the
    two buffers PyNaCl allocates and the copy of the message it returns are skipped.
    cffi releases the GIL around the call, as before.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature does not verify")
    signed = signature + CONTEXT + body
    if _lib.crypto_sign_open(_ffi.NULL, _ffi.NULL, signed, len(signed), public_key) != 0:
        raise errors.VerifyError(errors.INVALID_SIGNATURE, "signature does not verify")


class Identity:
    """An Ed25519 key pair: the only place a secret key lives."""

    __slots__ = ("_secret", "public_key", "public_key_text", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise errors.LocalError(f"an Ed25519 seed is {SEED_BYTES} bytes")
        key = nacl.signing.SigningKey(seed)
        self.seed = seed
        self._secret = key._signing_key  # 64-byte libsodium secret, for the fast path
        self.public_key = bytes(key.verify_key)
        self.public_key_text = encode_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_BYTES))

    def sign(self, body: bytes) -> bytes:
        """Detached signature over CONTEXT + body.

        libsodium's ``crypto_sign`` (what PyNaCl's wrapper calls), keeping only the
        signature: no length output and no copy of the signed message.
        """
        message = CONTEXT + body
        signed = _ffi.new("unsigned char[]", len(message) + SIGNATURE_BYTES)
        if _lib.crypto_sign(signed, _ffi.NULL, message, len(message), self._secret) != 0:
            raise errors.LocalError("libsodium could not sign")
        return _ffi.buffer(signed, SIGNATURE_BYTES)[:]

    def save(self, path: str | os.PathLike[str], *, exclusive: bool = False) -> None:
        """Write the seed as hex to a file readable by the owner only (0600).

        ``exclusive``: raise ``FileExistsError`` rather than replace an existing file.
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (self.seed.hex() + "\n").encode("ascii"))
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        p = Path(path)
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise errors.LocalError(f"{p} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            seed = bytes.fromhex(p.read_text("ascii").strip())
        except ValueError as exc:
            raise errors.LocalError(f"{p} does not hold a hex Ed25519 seed") from exc
        return cls(seed)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """The identity saved in ``path``, or a new one saved there (0600).

        Two processes creating the same file at once end up with the same key: the key
        is written to a temporary file and linked into place, which fails if the file
        appeared meanwhile (then it is loaded), so nobody reads a half-written file.
        """
        p = Path(path)
        if p.exists():
            return cls.load(p)
        ident = cls.generate()
        tmp = p.with_name(f".{p.name}.{os.urandom(6).hex()}.tmp")
        ident.save(tmp, exclusive=True)
        try:
            os.link(tmp, p)
        except FileExistsError:
            return cls.load(p)
        finally:
            tmp.unlink(missing_ok=True)
        return ident

    def __repr__(self) -> str:
        return f"Identity({self.public_key_text})"
