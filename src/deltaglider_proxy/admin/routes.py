"""The control plane under ``/_/``: for now health (liveness)."""

from __future__ import annotations

import json
import resource

from deltaglider_proxy.s3api.http import Receive, Response, Scope, Send, send_response


def _json(status: int, doc: dict[str, object]) -> Response:
    return Response(
        status=status, headers=[("content-type", "application/json")], body=json.dumps(doc).encode()
    )


async def handle_admin(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/_/health" and scope["method"] in ("GET", "HEAD"):
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        response = _json(200, {"status": "healthy", "backend": "ready", "peak_rss_bytes": peak_kib * 1024})
    else:
        response = _json(404, {"error": "not_found", "message": f"no such endpoint: {path}"})
    response.headers.extend([("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")])
    await send_response(send, response, head=scope["method"] == "HEAD")
