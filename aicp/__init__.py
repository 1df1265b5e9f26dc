"""AICP: signed, real-time agent-to-agent messaging.

The core (``messages``, ``signing``, ``registry``, ``strategies``, ``router``,
``protocol``) does no I/O and reads no clock; drivers (the asyncio server and
clients, the SimPy simulator) feed it events with ``now`` and carry out its actions.
"""

__version__ = "0.1.0"
