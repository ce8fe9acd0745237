"""JSON responses of the control plane."""

from __future__ import annotations

import json

from deltaglider_proxy.s3api.http import Response


def json_response(
    status: int, doc: dict[str, object], headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        status=status,
        headers=[("content-type", "application/json"), ("cache-control", "no-store"), *(headers or [])],
        body=json.dumps(doc).encode(),
    )
