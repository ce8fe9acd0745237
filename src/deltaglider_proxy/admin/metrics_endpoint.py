"""``GET /_/metrics``: Prometheus text exposition (control-plane.md §9), optionally token-guarded.

Without ``DGP_METRICS_TOKEN`` the endpoint is open, as upstream (Prometheus scrapers do not sign
requests); with it, ``Authorization: Bearer <token>`` is required (§6.7 [D]).

Per-bucket savings gauges come from the same bounded bucket walk as ``/_/stats``. A scrape never
waits for it: a stale reading (older than ``SAVINGS_REFRESH_SECONDS``) starts one walk in the
background and the scrape serves the previous reading, so scrape time stays O(1).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from deltaglider_proxy.engine.stats import bucket_stats
from deltaglider_proxy.observability.metrics import BucketSavings
from deltaglider_proxy.s3api.context import Services
from deltaglider_proxy.s3api.http import Response

log = logging.getLogger(__name__)
SAVINGS_REFRESH_SECONDS = 60.0
SAVINGS_OBJECT_LIMIT = 1000  # the /_/stats bound (storage.md §13.5)


class MetricsEndpoint:
    def __init__(self, services: Services, token: str | None) -> None:
        self._services = services
        self._token = token
        self._savings_at: float | None = None
        self._walk: asyncio.Task[None] | None = None

    def _authorised(self, authorization: str) -> bool:
        if not self._token:
            return True
        scheme, _, presented = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._token.encode()
        )

    def response(self, authorization: str) -> Response:
        if not self._authorised(authorization):
            return Response(
                status=401,
                headers=[("content-type", "text/plain; charset=utf-8"), ("www-authenticate", "Bearer")],
                body=b"metrics require Authorization: Bearer <DGP_METRICS_TOKEN>\n",
            )
        self._refresh_savings_if_stale()
        body, content_type = self._services.metrics.render()
        return Response(status=200, headers=[("content-type", content_type)], body=body)

    def _refresh_savings_if_stale(self) -> None:
        fresh = self._savings_at is not None and time.monotonic() - self._savings_at < SAVINGS_REFRESH_SECONDS
        if fresh or (self._walk is not None and not self._walk.done()):
            return
        self._walk = asyncio.create_task(self._walk_savings(), name="metrics-savings-walk")

    async def _walk_savings(self) -> None:
        engine = self._services.engine
        try:
            remaining = SAVINGS_OBJECT_LIMIT
            rows: list[BucketSavings] = []
            for info in await engine.list_buckets():
                stats = await bucket_stats(engine.backend, info.name, limit=max(remaining, 0))
                remaining -= stats.objects
                rows.append(
                    BucketSavings(
                        info.name, stats.objects, stats.original_bytes, stats.footprint_bytes, stats.truncated
                    )
                )
        except Exception as exc:  # noqa: BLE001 - a failed walk keeps the last reading
            log.warning("metrics: savings walk failed, keeping the previous reading: %s", exc)
        else:
            self._services.metrics.savings = rows
        # Failed walks are retried on the next scrape after the refresh interval, not at once.
        self._savings_at = time.monotonic()

    async def close(self) -> None:
        if self._walk is not None and not self._walk.done():
            self._walk.cancel()
