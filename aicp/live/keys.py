"""Where a peer's key lives between runs, so a restarted agent keeps its identity.

The router binds a peer id to the first key that registers it and refuses that id
under any other key (``key-mismatch``) for as long as it runs. An agent that made
a fresh key on every start could therefore not come back under its own id. So
``Agent`` (and ``Controller`` or ``aicp agent`` given an id) keep one key per id in
a file, created on first use with mode 0600:

* ``$AICP_KEY_DIR/<id>.key`` when ``AICP_KEY_DIR`` is set, else
* ``$XDG_CONFIG_HOME/aicp/keys/<id>.key``, else ``~/.config/aicp/keys/<id>.key``.

An explicit key file or ``Identity`` overrides the directory. The file holds the
32-byte Ed25519 seed as hex (``Identity.save``); anyone who can read it can act as
that peer. Characters of an id that are not safe in a file name (``/``, ``:``,
``@``, ``+``, ``=``, ``%``) are percent-encoded, so ``team/a1`` is ``team%2Fa1.key``.

An agent given no id takes one from its key (``default_agent_id``): the same key
file always gives the same id, so a restarted agent binds nothing new at a router
that keeps its bindings (``--state``). ``aicp agent`` without ``--id`` or ``--key``
keeps its keys in the first free *default slot* of the key directory
(``claim_default_slot``): ``agent-default-N.key``, held with a lock for as long as
the process runs, so a restart takes the same keys again while agents running
beside it on the same machine take the next slots.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from aicp import errors
from aicp.signing import Identity

KEY_DIR_ENV = "AICP_KEY_DIR"


def default_key_dir() -> Path:
    """``$AICP_KEY_DIR``, else ``$XDG_CONFIG_HOME/aicp/keys``, else ``~/.config/aicp/keys``."""
    explicit = os.environ.get(KEY_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "aicp" / "keys"


def key_path(peer_id: str, key_dir: str | os.PathLike[str] | None = None) -> Path:
    """The key file of ``peer_id`` in ``key_dir`` (default: ``default_key_dir()``)."""
    return Path(key_dir if key_dir is not None else default_key_dir()) / f"{quote(peer_id, safe='')}.key"


def identity_for(peer_id: str, *, key_file: str | os.PathLike[str] | None = None, key_dir: str | os.PathLike[str] | None = None) -> Identity:
    """Load the key of ``peer_id`` (from ``key_file``, else its file in the key directory), creating it 0600 if missing."""
    path = Path(key_file) if key_file is not None else key_path(peer_id, key_dir)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Identity.load_or_create(path)


#: Default slots tried before ``claim_default_slot`` gives up: that many agent processes without ids on one machine.
MAX_DEFAULT_SLOTS = 1024


def default_agent_id(identity: Identity) -> str:
    """``agent-`` and the first 12 hex digits (48 bits) of SHA-256 of the public key: one key, one id, every run."""
    return "agent-" + hashlib.sha256(identity.public_key).hexdigest()[:12]


def claim_default_slot(key_dir: str | os.PathLike[str] | None = None) -> tuple[Path, int]:
    """Lock the first free default slot N of ``key_dir``: ``(path of agent-default-N.key, lock fd)``.

    The slot is held by an exclusive ``flock`` on ``agent-default-N.lock`` until the
    returned descriptor is closed or the process ends (even by ``SIGKILL``), so
    processes running at once get distinct slots and a restarted one gets the lowest
    free slot back, with its keys. The key file itself is not created here. O(slots in use).
    Raises ``LocalError`` when all ``MAX_DEFAULT_SLOTS`` are held.
    """
    directory = Path(key_dir if key_dir is not None else default_key_dir())
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in range(MAX_DEFAULT_SLOTS):
        fd = os.open(directory / f"agent-default-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return directory / f"agent-default-{n}.key", fd
    raise errors.LocalError(f"all {MAX_DEFAULT_SLOTS} default agent key slots in {directory} are in use; give --id or --key")
