"""One structured line per control-plane (``/_/``) request, like the S3 edge's access line.

Only the path is logged, never the query string: OAuth callbacks and presigned-style links carry
codes and tokens there.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from deltaglider_proxy.observability.logs import request_id_var
from deltaglider_proxy.s3api.http import Message, Receive, Scope, Send

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("deltaglider_proxy.admin.access")
# Polled every few seconds by load balancers and scrapers: their successes are DEBUG lines.
PROBE_PATHS = frozenset({"/_/health", "/_/ready", "/_/metrics"})


async def serve_logged(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    token = request_id_var.set(str(uuid.uuid4()))
    status = 0
    sent = 0

    async def observing_send(message: Message) -> None:
        nonlocal status, sent
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            sent += len(message.get("body", b""))
        await send(message)

    try:
        await app(scope, receive, observing_send)
    finally:
        client = scope.get("client")
        quiet = scope["path"] in PROBE_PATHS and 200 <= status < 300
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "admin request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status or 500,
                "bytes_out": sent,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client_ip": str(client[0]) if client else "-",
            },
        )
        request_id_var.reset(token)
