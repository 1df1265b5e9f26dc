"""Errors, and the stable codes that travel on the wire.

Hierarchy::

    AicpError
    ├── LocalError          you misused the API (a bug on this side)
    └── ProtocolError       a peer sent something we refuse; carries a wire ``code``
        ├── DecodeError     the frame is not a valid AICP frame
        └── VerifyError     the frame decoded but its signature, key or freshness fails

``TaskError`` is what a controller raises when a task ends in an error outcome.
Every code below is documented in docs/PROTOCOL.md; tests check that the two agree.
"""

from __future__ import annotations

from typing import Final

# --- frame and message problems -------------------------------------------------
MALFORMED: Final = "malformed"  # not JSON, truncated, too deep, bad numbers, duplicate keys
INVALID_MESSAGE: Final = "invalid-message"  # JSON, but not an AICP message (shape, fields, types)
UNSUPPORTED_VERSION: Final = "unsupported-version"
TOO_LARGE: Final = "too-large"
# --- authenticity -----------------------------------------------------------------
INVALID_SIGNATURE: Final = "invalid-signature"
INVALID_KEY: Final = "invalid-key"
KEY_MISMATCH: Final = "key-mismatch"  # the id is bound to another key, or sender/key disagree
STALE: Final = "stale"
DUPLICATE: Final = "duplicate"
AUTH_REQUIRED: Final = "auth-required"
BAD_NONCE: Final = "bad-nonce"
NOT_ALLOWED: Final = "not-allowed"
NOT_ASSIGNED: Final = "not-assigned"
ID_CONFLICT: Final = "id-conflict"  # a task id reused for a different task (method or payload differ)
# --- task outcomes ------------------------------------------------------------------
NO_AGENT: Final = "no-agent"
TIMEOUT: Final = "timeout"
AGENT_FAILED: Final = "agent-failed"
REJECTED: Final = "rejected"
# --- load and lifecycle -------------------------------------------------------------
RATE_LIMITED: Final = "rate-limited"
OVERLOADED: Final = "overloaded"
SHUTTING_DOWN: Final = "shutting-down"

ALL_CODES: Final[frozenset[str]] = frozenset(
    {
        MALFORMED,
        INVALID_MESSAGE,
        UNSUPPORTED_VERSION,
        TOO_LARGE,
        INVALID_SIGNATURE,
        INVALID_KEY,
        KEY_MISMATCH,
        STALE,
        DUPLICATE,
        AUTH_REQUIRED,
        BAD_NONCE,
        NOT_ALLOWED,
        NOT_ASSIGNED,
        ID_CONFLICT,
        NO_AGENT,
        TIMEOUT,
        AGENT_FAILED,
        REJECTED,
        RATE_LIMITED,
        OVERLOADED,
        SHUTTING_DOWN,
    }
)

#: Codes that can end an admitted task (its one outcome, kept and sent again on resubmission).
#: Every other code refuses one frame and leaves no trace; ``shutting-down`` is both (PROTOCOL.md §6).
OUTCOME_CODES: Final[frozenset[str]] = frozenset({NO_AGENT, TIMEOUT, AGENT_FAILED, REJECTED, SHUTTING_DOWN})

#: Outcomes after which a controller may sensibly try again later.
RETRYABLE_CODES: Final[frozenset[str]] = frozenset(
    {NO_AGENT, TIMEOUT, AGENT_FAILED, RATE_LIMITED, OVERLOADED, SHUTTING_DOWN}
)


class AicpError(Exception):
    """Root of every error this package raises on purpose."""


class LocalError(AicpError):
    """The caller misused the API."""


class ProtocolError(AicpError):
    """A peer sent something that is refused; ``code`` is the wire code."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class DecodeError(ProtocolError):
    """The bytes are not a valid AICP frame or message."""


class VerifyError(ProtocolError):
    """The frame decoded, but its signature, key, freshness or binding fails."""


class TaskError(AicpError):
    """A task ended with an error outcome (raised by controllers)."""

    def __init__(self, code: str, message: str = "", task_id: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.task_id = task_id

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES
