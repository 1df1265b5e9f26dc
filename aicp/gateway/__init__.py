"""The HTTP control plane ("AINS" in the original design) and the A2A front door.

``aicp gateway`` runs a FastAPI app on uvicorn that holds one controller identity
and one long-lived connection to the router. HTTP callers submit tasks with
``POST /tasks``; A2A clients see each capability as one agent at ``/a2a/METHOD``.
Every result carries the agent's signature and signed bytes, so a caller can
check it without trusting the gateway. See docs/GATEWAY.md.

Modules: ``tasks`` (what the gateway remembers about each task), ``link`` (the
controller connection), ``view`` (the live registry, read from the router),
``auth`` (API keys and per-key rates), ``problems`` (RFC 9457 errors), ``app``
(REST), ``a2a`` (the A2A JSON-RPC binding).
"""
