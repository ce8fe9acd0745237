"""A bare ASGI app served by the same server (granian) as the proxy: PUT reads and drops the body,
GET streams ``?size=N`` zero bytes. It is the HTTP ceiling that ``passthrough.py`` compares to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
CHUNK = b"\0" * (1024 * 1024)


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        size = int(parse_qs(scope["query_string"].decode()).get("size", ["0"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(size).encode())],
            }
        )
        while size > 0:
            piece = CHUNK[: min(size, len(CHUNK))]
            size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": size > 0})
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
