"""The S3 edge's view of an HTTP exchange: a parsed request and a response to send over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

Scope = Mapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_HEADER_BYTES = 16 * 1024


def parse_query(query_string: str) -> dict[str, list[str]]:
    """Query parameters, percent-decoded; a bare name has the value "". ``+`` stays a plus (S3)."""
    params: dict[str, list[str]] = {}
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(unquote(name), []).append(unquote(value))
    return params


def collect_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        value = value_bytes.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


@dataclass
class S3Request:
    method: str
    raw_path: str
    query_string: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    bucket: str | None
    key: str | None
    client_ip: str
    _receive: Receive
    request_id: str
    virtual_host: bool = False
    body_complete: bool = False

    async def receive(self) -> dict[str, Any]:
        """The next body message; remembers when the body has been read to its end, because
        asking the server for more after that waits for the connection to close."""
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_complete = True
        return message

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name in self.query

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # Sent as the body length when a stream is used, so clients can verify completeness.
    content_length: int | None = None

    def set(self, name: str, value: str) -> None:
        self.headers.append((name, value))


def xml_response(body: bytes, status: int = 200) -> Response:
    return Response(status=status, headers=[("content-type", "application/xml")], body=body)


async def send_response(send: Send, response: Response, *, head: bool = False) -> int:
    """Send over ASGI; returns body bytes sent. HEAD sends headers only (with the real length)."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in response.headers]
    if response.stream is not None:
        if response.content_length is not None:
            headers.append((b"content-length", str(response.content_length).encode()))
    elif not any(k == b"content-length" for k, _ in headers) and response.status not in (204, 304):
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    sent = 0
    if head or response.status in (204, 304):
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if response.stream is not None:
            await _close_stream(response.stream)
        return 0
    if response.stream is None:
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        return len(response.body)
    try:
        async for chunk in response.stream:
            if chunk:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await _close_stream(response.stream)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return sent


async def _close_stream(stream: AsyncIterator[bytes]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()
