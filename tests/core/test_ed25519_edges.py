"""Ed25519 hard cases: pin what the verifier and the registration key check accept.

AICP verifies with libsodium (``crypto_sign_open`` via PyNaCl) and, at
registration, also requires ``crypto_core_ed25519_is_valid_point`` (canonical,
not small order, in the prime-order subgroup). If a library upgrade changes any
verdict below, a test here fails and someone has to decide whether that is fine.

Vectors: the 15 cases of "Taming the many EdDSAs" (Chalkias, Garillot,
Nikolaenko, SSR 2020; github.com/novifinancial/ed25519-speccheck, cases.json),
whose published libsodium row is "only case 6 verifies"; the eight small-order
points and their non-canonical encodings (as in C2SP/CCTV's ed25519 vectors and
libsodium's blocklist).
"""

from __future__ import annotations

import nacl.bindings as sodium
import nacl.exceptions
import pytest

from aicp import errors
from aicp.signing import CONTEXT, Identity, check_public_key, verify

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19

# (message, public key, signature), hex; index = the paper's case number.
SPECCHECK = [
    ("2a66241a42a9ee12994d8068dcf1bb7dfc6637b45450acd43711f637fa5080fc",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "182ef1a5b928da07fec769cc8a12db6bcf70dab3f3227fa315e9d5e3e01a3405"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f"
     "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512"
     "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7"
     "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e"
     "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942"
     "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "ca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
    ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
]
#: Published result for libsodium: only case 6 (S > 0, R and A mixed order) verifies.
LIBSODIUM_VERIFIES = {6}
#: Which public keys pass AICP's registration check: only the prime-order key of cases 9-10.
KEY_ACCEPTED = {9, 10}

SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]
NON_CANONICAL = [
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x sign bit set
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = -1, x sign bit set
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p, sign bit set
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p + 1, sign bit set
]


def libsodium_verifies(pk: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        sodium.crypto_sign_open(sig + msg, pk)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def key_accepted(pk: bytes) -> bool:
    try:
        check_public_key(pk)
    except errors.VerifyError as exc:
        assert exc.code == errors.INVALID_KEY
        return False
    return True


@pytest.mark.parametrize("case", range(len(SPECCHECK)))
def test_speccheck_vectors_libsodium_verdicts_are_pinned(case: int) -> None:
    msg, pk, sig = (bytes.fromhex(x) for x in SPECCHECK[case])
    assert libsodium_verifies(pk, msg, sig) == (case in LIBSODIUM_VERIFIES)
    assert key_accepted(pk) == (case in KEY_ACCEPTED)


def test_no_speccheck_vector_gets_past_registration_and_verification() -> None:
    """The router checks the key at registration, then verifies: every hard case is refused."""
    passing = [i for i, (m, pk, s) in enumerate(SPECCHECK) if key_accepted(bytes.fromhex(pk)) and libsodium_verifies(bytes.fromhex(pk), bytes.fromhex(m), bytes.fromhex(s))]
    assert passing == []


@pytest.mark.parametrize("hex_key", SMALL_ORDER)
def test_small_order_keys_are_refused_and_cannot_forge(hex_key: str) -> None:
    pk = bytes.fromhex(hex_key)
    assert not key_accepted(pk)
    body = b'{"type":"heartbeat"}'
    # S = 0 and R a small-order point: under a small-order key, lax verifiers accept this for
    # about one message in eight (R = identity: for every message when A is the identity).
    for r_hex in SMALL_ORDER:
        forgery = bytes.fromhex(r_hex) + bytes(32)
        with pytest.raises(errors.VerifyError) as info:
            verify(pk, body, forgery)
        assert info.value.code == errors.INVALID_SIGNATURE


@pytest.mark.parametrize("hex_key", NON_CANONICAL)
def test_non_canonical_keys_are_refused(hex_key: str) -> None:
    pk = bytes.fromhex(hex_key)
    assert not key_accepted(pk)
    assert not libsodium_verifies(pk, b"m", bytes.fromhex(SMALL_ORDER[0]) + bytes(32))


def test_all_zero_key_and_all_zero_signature() -> None:
    assert not key_accepted(bytes(32))
    with pytest.raises(errors.VerifyError):
        verify(bytes(32), b"", bytes(64))
    honest = Identity(b"\x05" * 32)
    with pytest.raises(errors.VerifyError):
        verify(honest.public_key, b"", bytes(64))


def test_mixed_order_key_verifies_in_libsodium_but_is_refused_at_registration() -> None:
    """An honest key plus a torsion point: libsodium's verify does not look at A's order, the
    registration check does. Signatures made with the honest secret do not verify under it."""
    honest = Identity(b"\x06" * 32)
    for torsion in SMALL_ORDER[1:]:
        mixed = sodium.crypto_core_ed25519_add(honest.public_key, bytes.fromhex(torsion))
        assert not key_accepted(mixed)
        assert not libsodium_verifies(mixed, CONTEXT + b"x", honest.sign(b"x"))
    assert key_accepted(honest.public_key)


def test_non_canonical_s_is_refused() -> None:
    honest = Identity(b"\x07" * 32)
    body = b'{"n":1}'
    sig = honest.sign(body)
    verify(honest.public_key, body, sig)  # the canonical signature is fine
    s = int.from_bytes(sig[32:], "little")
    for bad_s in (s + L, s + 2 * L, L, 2**256 - 1):
        if bad_s >= 2**256:
            continue
        with pytest.raises(errors.VerifyError):
            verify(honest.public_key, body, sig[:32] + bad_s.to_bytes(32, "little"))


def test_non_canonical_r_is_refused() -> None:
    """Speccheck cases 11 and 12 use R = a non-canonical encoding; here, every such R."""
    honest = Identity(b"\x08" * 32)
    body = b'{"n":2}'
    sig = honest.sign(body)
    for r_hex in NON_CANONICAL:
        with pytest.raises(errors.VerifyError):
            verify(honest.public_key, body, bytes.fromhex(r_hex) + sig[32:])
    # The same R with y + p (when it fits in 255 bits) is another spelling of the same point.
    y = int.from_bytes(sig[:32], "little") & ((1 << 255) - 1)
    if y + P < 2**255:
        alias = (y + P) | (int.from_bytes(sig[:32], "little") & (1 << 255))
        with pytest.raises(errors.VerifyError):
            verify(honest.public_key, body, alias.to_bytes(32, "little") + sig[32:])


def test_honest_signatures_verify_and_honest_keys_pass() -> None:
    """The other side of every refusal above: the normal case still works."""
    for n in range(1, 20):
        ident = Identity(bytes([n]) * 32)
        assert key_accepted(ident.public_key)
        body = b'{"n":%d}' % n
        verify(ident.public_key, body, ident.sign(body))
