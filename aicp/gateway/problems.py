"""Errors as RFC 9457 problem details (``application/problem+json``), each with its AICP code.

A problem body is::

    {"type": "urn:aicp:error:no-agent", "title": "Service Unavailable", "status": 503,
     "detail": "no active agent has text.classify", "code": "no-agent", "task_id": "..."}

Task outcome codes are the wire codes of docs/PROTOCOL.md §8. The gateway adds a
few HTTP-only codes that never travel on the wire (``HTTP_ONLY_CODES``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final

import msgspec
from starlette.responses import Response

from aicp import errors
from aicp.gateway.link import IDEMPOTENCY_CONFLICT

PROBLEM_JSON: Final = "application/problem+json"

UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"
NOT_FOUND: Final = "not-found"
UNSUPPORTED_MEDIA_TYPE: Final = "unsupported-media-type"
CANCELED: Final = "canceled"
NOT_CONNECTED: Final = "not-connected"

#: Codes only the gateway uses (documented in docs/GATEWAY.md), never sent on the wire.
HTTP_ONLY_CODES: Final = frozenset({UNAUTHORIZED, FORBIDDEN, NOT_FOUND, UNSUPPORTED_MEDIA_TYPE, IDEMPOTENCY_CONFLICT, CANCELED, NOT_CONNECTED, "connection-lost"})

#: HTTP status of a task that ended with this code.
STATUS_OF_CODE: Final[dict[str, int]] = {
    errors.MALFORMED: 400,
    errors.INVALID_MESSAGE: 422,
    errors.UNSUPPORTED_VERSION: 422,
    errors.TOO_LARGE: 413,
    errors.NO_AGENT: 503,
    errors.TIMEOUT: 504,
    errors.AGENT_FAILED: 502,
    errors.REJECTED: 422,
    errors.RATE_LIMITED: 429,
    errors.OVERLOADED: 503,
    errors.SHUTTING_DOWN: 503,
    errors.STALE: 502,
    errors.DUPLICATE: 502,
    errors.ID_CONFLICT: 422,
    IDEMPOTENCY_CONFLICT: 422,
    CANCELED: 409,
    NOT_CONNECTED: 503,
    "connection-lost": 503,
}

_encoder: Final = msgspec.json.Encoder()
_TITLES: Final = {s.value: s.phrase for s in HTTPStatus}


def status_of(code: str) -> int:
    return STATUS_OF_CODE.get(code, 502)


def problem_body(status: int, code: str, detail: str, **extra: Any) -> bytes:
    """The JSON of one problem; ``extra`` members that are None are left out."""
    body: dict[str, Any] = {"type": f"urn:aicp:error:{code}", "title": _TITLES[status], "status": status, "detail": detail, "code": code}
    body.update({k: v for k, v in extra.items() if v is not None})
    return _encoder.encode(body)


def problem(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return Response(problem_body(status, code, detail, **extra), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def example(status: int, code: str, detail: str) -> dict[str, Any]:
    """An OpenAPI response entry with one example problem."""
    body = {"type": f"urn:aicp:error:{code}", "title": HTTPStatus(status).phrase, "status": status, "detail": detail, "code": code}
    return {"description": f"{HTTPStatus(status).phrase} ({code})", "content": {PROBLEM_JSON: {"example": body}}}
