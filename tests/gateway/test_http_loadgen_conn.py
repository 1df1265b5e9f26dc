"""The HTTP load generator's keep-alive connections: one the server closed while idle is not reused.

uvicorn closes a keep-alive connection after 5 s idle. The open-loop generator keeps a
stack of idle connections, so after a burst the deepest ones sit idle for longer than that;
reusing one sent a request into a closed socket and counted a ``connection-error`` that the
gateway never saw. A real asyncio server on 127.0.0.1 answers one request per connection
and then closes it, as uvicorn does at its timeout.
"""

from __future__ import annotations

import asyncio

from aicp.lab.bench.http_loadgen import HttpConn

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'


def test_a_connection_the_server_closed_is_not_usable_and_an_open_one_is() -> None:
    async def main() -> None:
        async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:")
            await reader.readexactly(length)
            writer.write(ANSWER)
            await writer.drain()
            await asyncio.sleep(0.2)  # idle, as until a keep-alive timeout
            writer.close()

        server = await asyncio.start_server(one_answer_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            conn = await HttpConn.open("127.0.0.1", port)
            head = f"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: ".encode()
            assert await conn.post(head, b"{}") == (200, b"{}")
            assert conn.usable()  # answered, still open
            for _ in range(100):  # the server closes it after 0.2 s
                if not conn.usable():
                    break
                await asyncio.sleep(0.02)
            assert not conn.usable()
            conn.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
