"""The control plane under ``/_/``: health, readiness, metrics, audit and savings statistics.

``/_/stats`` and ``/_/api/admin/audit`` signed with SigV4 are authorised like an S3 request from
an admin principal (or open when ``authentication: none``); the audit read with an admin session
goes to the admin API (``admin/api.py``) like every other ``/_/api/`` route. Health, readiness and
metrics are for probes and scrapers: no session.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from deltaglider_proxy.admin.api import AdminApi
from deltaglider_proxy.admin.audit_endpoint import audit_entries
from deltaglider_proxy.admin.health import Readiness, ReadySettings, health
from deltaglider_proxy.admin.metrics_endpoint import MetricsEndpoint
from deltaglider_proxy.engine.stats import BucketStats, bucket_stats
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api.context import Services
from deltaglider_proxy.s3api.http import Receive, Response, Scope, Send, collect_headers, send_response
from deltaglider_proxy.s3api.sigv4 import SignedRequest, has_credentials, verify

ALL_BUCKETS_CACHE_SECONDS = 10.0
ALL_BUCKETS_LIMIT = 1000


def _signed_request(scope: Scope) -> SignedRequest:
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return SignedRequest(
        method=scope["method"],
        raw_path=raw_path.decode("latin-1").split("?", 1)[0],
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=collect_headers(scope.get("headers", [])),
    )


def _json(status: int, doc: dict[str, object]) -> Response:
    return Response(
        status=status, headers=[("content-type", "application/json")], body=json.dumps(doc).encode()
    )


class AdminRoutes:
    def __init__(self, services: Services, api: AdminApi | None = None) -> None:
        self.services = services
        self.api = api
        self._all_cache: tuple[float, dict[str, object]] | None = None
        runtime = services.runtime
        # The IAM store is opened (and decrypted) at start-up or the process does not start, so
        # while it runs the store is either open or not configured.
        has_store = api is not None and api.state.iam is not None
        self.readiness = Readiness(
            services,
            ReadySettings(runtime.ready_timeout_secs, runtime.ready_retries, runtime.ready_cache_ttl_secs),
            config_db=(lambda: "ready") if has_store else (lambda: "absent"),
        )
        self.metrics = MetricsEndpoint(services, runtime.metrics_token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        method = scope["method"]
        try:
            if path == "/_/health" and method in ("GET", "HEAD"):
                response = health(self.services)
            elif path == "/_/ready" and method in ("GET", "HEAD"):
                response = await self.readiness.response()
            elif path == "/_/metrics" and method == "GET":
                response = self.metrics.response(
                    collect_headers(scope.get("headers", [])).get("authorization", "")
                )
            elif (
                path == "/_/api/admin/audit"
                and method == "GET"
                and (self.api is None or has_credentials(_signed_request(scope)))
            ):
                # Automation may sign with SigV4 (an admin principal); a browser uses its session.
                self._authorise(scope)
                response = audit_entries(
                    self.services.audit, scope.get("query_string", b"").decode("latin-1")
                )
            elif path.startswith("/_/api/") and self.api is not None:
                response = await self.api.handle(scope, receive)
            elif path == "/_/stats" and method == "GET":
                self._authorise(scope)
                response = _json(200, await self._stats(scope))
            else:
                response = _json(404, {"error": "not_found", "message": f"no such endpoint: {path}"})
        except errors.S3Error as exc:
            response = Response(
                status=exc.status,
                headers=[("content-type", "application/xml")],
                body=errors.render_error(exc, "-"),
            )
        response.headers.extend([("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")])
        await send_response(send, response, head=method == "HEAD")

    def _authorise(self, scope: Scope) -> None:
        access = self.services.access
        if access.mode == "open":
            return
        signed = _signed_request(scope)
        if not has_credentials(signed):
            raise errors.AccessDenied()
        auth = verify(
            signed,
            access,
            now=datetime.now(UTC),
            clock_skew_seconds=self.services.runtime.clock_skew_seconds,
        )
        # Statistics cover every bucket, so only an admin principal may read them.
        principal = access.principal_for(auth.access_key_id)
        if principal is None or not principal.enabled or not principal.is_admin:
            raise errors.AccessDenied()

    async def _stats(self, scope: Scope) -> dict[str, object]:
        from urllib.parse import parse_qs

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        bucket = (query.get("bucket") or [None])[0]
        engine = self.services.engine
        background = engine.background
        pending = {"pending_delta_encodes": background.pending if background is not None else 0}
        if bucket:
            if not await engine.bucket_exists(bucket):
                raise errors.NoSuchBucket(resource=bucket)
            stats = await bucket_stats(engine.backend, bucket)
            return {**_summary([stats]), **stats.as_dict(detail=True), **pending}
        cached = self._all_cache
        if cached is not None and time.monotonic() - cached[0] < ALL_BUCKETS_CACHE_SECONDS:
            return cached[1]
        remaining = ALL_BUCKETS_LIMIT
        every: list[BucketStats] = []
        for info in await engine.list_buckets():
            stats = await bucket_stats(engine.backend, info.name, limit=max(remaining, 0))
            remaining -= stats.objects
            every.append(stats)
        doc = {**_summary(every), "buckets": [s.as_dict() for s in every], **pending}
        self._all_cache = (time.monotonic(), doc)
        return doc


def _summary(every: list[BucketStats]) -> dict[str, object]:
    """The spec's fields (storage.md §13.5: references not counted) plus the honest footprint."""
    original = sum(s.original_bytes for s in every)
    stored = sum(s.stored_bytes for s in every)
    footprint = sum(s.footprint_bytes for s in every)
    return {
        "total_objects": sum(s.objects for s in every),
        "total_original_size": original,
        "total_stored_size": stored,
        "savings_percentage": round(100.0 * (1 - stored / original), 2) if original else 0.0,
        "total_reference_size": sum(s.reference_bytes for s in every),
        "total_footprint_size": footprint,
        "footprint_savings_percentage": round(100.0 * (1 - footprint / original), 2) if original else 0.0,
        "truncated": any(s.truncated for s in every),
    }
