"""The admin API's HTTP vocabulary: JSON requests and responses, and one error shape
(control-plane.md §2.7 [D]): ``{"error": "<machine_code>", "message": "<human text>"}``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deltaglider_proxy.auth.sessions import Session
from deltaglider_proxy.s3api.http import Receive, Response

MAX_JSON_BODY = 1024 * 1024  # §1.5 [D]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}

    def response(self) -> Response:
        return json_response(self.status, {"error": self.code, "message": self.message, **self.extra})


def unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "log in first: POST /_/api/admin/login")


def json_response(status: int, doc: object, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status=status,
        headers=[("content-type", "application/json"), ("cache-control", "no-store"), *(headers or [])],
        body=json.dumps(doc).encode(),
    )


def empty(status: int = 204) -> Response:
    return Response(status=status, headers=[("cache-control", "no-store")])


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    client_ip: str
    peer: str | None
    receive: Receive
    params: dict[str, str] = field(default_factory=dict)
    # The caller's session, set by the route table once the route's auth requirement held.
    session: Session | None = None

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    async def raw_body(self, limit: int = MAX_JSON_BODY) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def json(self, *, required: bool = True) -> dict[str, Any]:
        body = await self.raw_body()
        if not body.strip():
            if required:
                raise ApiError(400, "invalid_body", "expected a JSON object body")
            return {}
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "invalid_body", "expected a JSON object body")
        return doc

    def user_agent(self) -> str:
        return self.headers.get("user-agent", "")


def field_of(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``doc[name]`` checked against ``kind``; 400 naming the field otherwise."""
    if name not in doc or doc[name] is None:
        return default
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, "invalid_field", f"{name}: expected {names}")
    return value
