"""``aicp.live.links.frame_texts`` writes what websockets would, and websockets' own parser reads it back."""

from __future__ import annotations

import pytest
from websockets.protocol import Protocol, Side, State

from aicp.live.links import frame_texts

#: Every header length form (7-bit, 16-bit, 64-bit) at its edges, and an empty message.
MESSAGES = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, '{"x":"é"}'.encode()]


def test_unmasked_frames_are_byte_for_byte_websockets_own() -> None:
    server = Protocol(Side.SERVER, state=State.OPEN)
    for message in MESSAGES:
        server.send_text(message)
    assert frame_texts(MESSAGES, masked=False) == b"".join(server.data_to_send())


@pytest.mark.parametrize(("reader", "masked"), [(Side.SERVER, True), (Side.CLIENT, False)])
def test_websockets_parses_them_back_as_whole_text_messages(reader: Side, masked: bool) -> None:
    peer = Protocol(reader, state=State.OPEN, max_size=None)
    peer.receive_data(frame_texts(MESSAGES, masked=masked))
    events = peer.events_received()
    assert [bytes(e.data) for e in events] == MESSAGES and all(e.fin for e in events)  # type: ignore[union-attr]
    assert peer.state is State.OPEN


def test_a_server_refuses_an_unmasked_client_frame() -> None:
    server = Protocol(Side.SERVER, state=State.OPEN)
    server.receive_data(frame_texts([b"x"], masked=False))
    assert server.events_received() == [] and server.state is State.CLOSING
