"""Services keep an idle HTTP connection open longer than their clients do (httpx drops an idle
one after 5 s, load balancers after up to 60 s): with uvicorn's 5 s, a client reusing a connection
just as the server closed it got a ReadError, once in a CI run."""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from fastapi import FastAPI

from shared.host import serve_in_process
from shared.http import KEEP_ALIVE_SECONDS


async def test_an_idle_connection_outlives_the_clients_keep_alive():
    assert KEEP_ALIVE_SECONDS > 60
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    async with serve_in_process(app) as url:
        where = urlsplit(url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        try:
            for round_ in range(2):
                writer.write(f"GET /ping HTTP/1.1\r\nHost: {where.netloc}\r\n\r\n".encode())
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                assert b"pong" in await reader.readexactly(length)
                if round_:
                    break  # the second request went over the connection that sat idle
                # idle past httpx's 5 s expiry: the server must not have closed it (read would return b"")
                try:
                    closed = await asyncio.wait_for(reader.read(1), 6.5)
                except asyncio.TimeoutError:
                    closed = None
                assert closed is None, "the server closed an idle keep-alive connection within 6.5 s"
        finally:
            writer.close()
