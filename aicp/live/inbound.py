"""Incoming WebSocket messages handed to a callback as websockets parses them, not through ``recv()``.

``recv()`` costs, per message, a frame queued in websockets' ``Assembler``, a future
woken, and a task switch to the coroutine awaiting it, which then calls the core. A
connection built from these classes calls ``on_message`` from ``data_received``
instead, in the order the frames arrived, with no queue and no await: the router's
core and the peers' sessions are synchronous, so nothing is lost by calling them there.

The transport limits stay where they were:

* a whole, unfragmented, well-formed data frame within ``max_size`` is cut out of
  the received bytes here (``data_received``); every other frame, and every byte
  after it, is parsed by websockets' sans-I/O ``Protocol``, which enforces
  ``max_size`` on the whole message, across fragments (close 1009), closes a
  protocol error with 1002, and answers pings and closes;
* this module reassembles fragmented messages (at most ``MAX_FRAGMENTS``, else close
  1009, as websockets does) and, with ``check_utf8``, refuses a text message that
  is not valid UTF-8 as a whole with close 1007, as ``recv()`` does. Nothing is
  delivered after a refusal;
* the opening handshake and its timeout are websockets' own, unchanged.

Flow control: a message is handled before the next byte is read, so the read side
needs no queue and no pause; what is written is bounded by the driver's links.

``direct(on_message)`` switches a connection over after its handshake (messages that
arrived before are delivered first, in order); ``wait_closed()`` then ends with the
connection, and ``close_exc`` says how it closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, TooManyFragments
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame, apply_mask
from websockets.protocol import OPEN, SERVER, Event
from websockets.streams import StreamReader

log = logging.getLogger("aicp.live.inbound")

#: ``on_message(data, binary)``: one whole message; ``data`` is bytes (valid UTF-8 for a
#: text message when the connection checks it), ``binary`` says it came as a binary message.
OnMessage = Callable[[bytes, bool], None]


class DirectMessages:
    """Mixed into a websockets ``Connection``: whole messages go to ``on_message`` as they are parsed.

    O(size) per frame (one copy to unmask it); a fragmented message is joined once,
    when its last fragment arrives.
    """

    on_message: OnMessage | None = None
    check_utf8 = True
    _fragments: list[Any] | None = None
    _text = False
    _refused = False

    def direct(self, on_message: OnMessage, check_utf8: bool = True) -> None:
        """Deliver every message from now on to ``on_message``, those already queued first, in order."""
        conn: Any = self
        self.check_utf8 = check_utf8
        self.on_message = on_message
        queued = conn.recv_messages.frames.queue
        while queued and not self._refused:
            self._frame(queued.popleft())
        conn.recv_messages.maybe_resume()

    def data_received(self, data: bytes) -> None:
        """Whole unfragmented data frames are cut out of ``data`` here; anything else goes to websockets.

        The fast path takes only what websockets would turn into exactly one message
        event: FIN set, no RSV bit, opcode text or binary, masking as the side requires,
        within ``max_size``, complete in ``data``; and only while websockets' parser
        stands between two frames, the connection is open, no extension is negotiated
        and no fragmented message is in progress. The first byte that is anything else
        (a control frame, a fragment, a partial frame, an error) and everything after it
        go to websockets' parser, which then decides exactly as it always did.
        """
        protocol: Any = self.protocol  # type: ignore[attr-defined]
        if (self.on_message is None or self._refused or self._fragments is not None or protocol.state is not OPEN or protocol.extensions
                or protocol.current_size is not None or protocol.max_fragment_size is not None or not _between_frames(protocol)):
            super().data_received(data)  # type: ignore[misc]
            return
        masked = protocol.side is SERVER
        limit = protocol.max_message_size
        pos, end = 0, len(data)
        while end - pos >= 2:
            head = data[pos]
            if head != 0x81 and head != 0x82:  # FIN, no RSV, text or binary
                break
            length = data[pos + 1]
            if (length & 0x80 != 0) is not masked:
                break
            length &= 0x7F
            start = pos + 2
            if length == 126:
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            if limit is not None and length > limit:
                break
            if masked:
                start += 4
            stop = start + length
            if stop > end:
                break
            message = apply_mask(data[start:stop], data[start - 4 : start]) if masked else data[start:stop]
            pos = stop
            self._deliver(message, head == 0x81)
            if self._refused or protocol.state is not OPEN:
                break
        if pos < end:
            super().data_received(data[pos:] if pos else data)  # type: ignore[misc]

    def process_event(self, event: Event) -> None:
        if self.on_message is None or not isinstance(event, Frame) or event.opcode not in (TEXT, BINARY, CONT):
            super().process_event(event)  # type: ignore[misc]
            return
        if not self._refused:
            self._frame(event)

    def _frame(self, frame: Frame) -> None:
        fragments = self._fragments
        if fragments is None:
            if frame.fin:
                self._deliver(frame.data if type(frame.data) is bytes else bytes(frame.data), frame.opcode is TEXT)
                return
            self._fragments = [frame.data]
            self._text = frame.opcode is TEXT
            return
        if len(fragments) >= MAX_FRAGMENTS:
            self._refuse(CloseCode.MESSAGE_TOO_BIG, "too many fragments", TooManyFragments(MAX_FRAGMENTS))
            return
        fragments.append(frame.data)
        if frame.fin:
            self._fragments = None
            self._deliver(b"".join(fragments), self._text)

    def _deliver(self, data: bytes, text: bool) -> None:
        if text and self.check_utf8 and not data.isascii():  # ASCII is valid UTF-8: checked without decoding a copy
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                self._refuse(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}", exc)
                return
        assert self.on_message is not None
        try:
            self.on_message(data, not text)
        except Exception as exc:  # a bug in the callback: this connection ends, the others go on
            log.exception("message handler failed")
            self._refuse(CloseCode.INTERNAL_ERROR, "internal error", exc)

    def _refuse(self, code: CloseCode, reason: str, exc: BaseException) -> None:
        """Close as ``recv()`` would have: fail the connection with ``code``; deliver nothing more."""
        self._refused = True
        self._fragments = None
        conn: Any = self
        conn.set_connection_exc(exc)
        asyncio.get_running_loop().create_task(self._fail(code, reason))

    async def _fail(self, code: CloseCode, reason: str) -> None:
        conn: Any = self
        with contextlib.suppress(ConnectionClosed):
            async with conn.send_context():
                conn.protocol.fail(code, reason)


def _between_frames(protocol: Any) -> bool:
    """True if websockets' parser waits for the first byte of a frame (not inside one).

    Read from its generator: between frames it waits in ``StreamReader.at_eof``. Any
    other shape (another websockets version) answers False: the fast path is not taken.
    """
    try:
        waiting = protocol.parser
        while waiting.gi_yieldfrom is not None:  # a server's parser delegates to Protocol.parse after the handshake
            waiting = waiting.gi_yieldfrom
        return waiting.gi_code is _AT_EOF and not protocol.reader.buffer  # type: ignore[no-any-return]
    except AttributeError:
        return False


_AT_EOF = StreamReader.at_eof.__code__


class DirectServerConnection(DirectMessages, ServerConnection):
    """A server connection that can deliver messages with ``direct``."""


class DirectClientConnection(DirectMessages, ClientConnection):
    """A client connection that can deliver messages with ``direct``."""
