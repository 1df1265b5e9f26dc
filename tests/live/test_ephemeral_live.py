"""Ephemeral controller ids on a real WebSocket router (docs/PROTOCOL.md §4.4).

``Controller(url)`` and ``aicp submit`` without ``--id`` make their id up, so they register
it as ephemeral and the router frees it ``window_s`` after they have gone; a chosen id
(``--id``, ``AICPController(url, "name")``) stays bound. The router's window is 1 s here.
"""

from __future__ import annotations

import argparse
import asyncio

import pytest
from live_helpers import agent, metric_samples, run, serving, wait_until

from aicp import errors
from aicp.cli import submit
from aicp.live.client import PeerClient
from aicp.live.controller import AICPController, Controller
from aicp.protocol import ProtocolConfig
from aicp.signing import Identity

pytestmark = [pytest.mark.live]

WINDOW = 1.0


def echo(obj: object) -> object:
    return obj


def test_one_shot_controllers_without_a_chosen_id_are_freed_and_chosen_ones_stay() -> None:
    async def main() -> None:
        async with serving(protocol_config=ProtocolConfig(window_s=WINDOW)) as server, agent(server.url, "a1", {"echo": echo}):
            proto = server.proto
            for i in range(5):
                async with Controller(server.url) as ctl:  # a made-up id, as each run of a script
                    assert ctl.session.ephemeral
                    assert (await ctl.submit("echo", i)).value == i
            parser = argparse.ArgumentParser()
            submit.add_arguments(parser)
            for i in range(3):  # aicp submit, in this process
                assert await submit._submit(parser.parse_args(["echo", "1", "--url", server.url]), i) == i
            async with AICPController(server.url, "chosen") as chosen:
                assert not chosen.session.ephemeral
                assert await chosen.submit("echo", 1) == 1
            # each made-up id is freed WINDOW after its controller left, by the router's timer
            await wait_until(lambda: proto.bound_ids == 2, timeout=10 * WINDOW, what="the made-up ids to be freed")
            assert proto.connected_peers() == {"a1": "agent"}
            assert (await asyncio.to_thread(metric_samples, server.url))[("aicp_bound_ids", ())] == 2

    run(main(), timeout=30)


def test_a_client_refused_for_the_field_registers_again_without_it() -> None:
    """A router older than ``ephemeral`` refuses the unknown field (``invalid-message``); the client then binds its id for good there.

    An agent's ephemeral registration is refused with the same code by this router, which stands in for an old one.
    """

    async def main() -> None:
        async with serving() as server:
            client = PeerClient(server.url, "a-made-up", Identity.generate(), role="agent", capabilities=["echo"], ephemeral=True, reconnect=False)
            try:
                await client.connect()
                assert client.registrations == 1 and not client.session.ephemeral
                assert server.proto.rejections == {errors.INVALID_MESSAGE: 1}
            finally:
                await client.close()

    run(main(), timeout=20)
