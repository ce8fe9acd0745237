"""Prometheus metrics: the catalogue of control-plane.md §9.1 and §9.2, one registry per process.

Names, types, labels and buckets are the spec's, exactly: dashboards and alert rules written for
upstream work unchanged. Events (requests, codec runs, auth outcomes, audit entries) are counted
when they happen; state (cache, codec permits, delta decisions, peak RSS) is read from the engine
at scrape time (O(1) reads), so the engine carries plain counters and knows nothing of Prometheus.

Additions of ours, outside the catalogue, are marked where defined: backend latency per backend
and operation, background-encoding queue, and per-bucket savings gauges.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# §9: the classic text format, which generate_latest writes (newer clients default their
# CONTENT_TYPE_LATEST to 1.0.0 although the body is the same 0.0.4 text for our names).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1024.0, 10240.0, 102400.0, 1024000.0, 10240000.0, 102400000.0)
RATIO_BUCKETS = (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CODEC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Backend calls range from sub-millisecond (filesystem HEAD) to seconds (multipart upload to S3).
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# [D] §9.1: anything else is reported as OTHER, so a client cannot mint label values.
STANDARD_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
AUTH_FAILURE_REASONS = (
    "missing_header",
    "invalid_presigned",
    "invalid_access_key",
    "user_disabled",
    "invalid_signature",
    "replay",
)
DECISIONS = ("delta", "passthrough", "reference")
# The S3 paths upstream gives their own operation label (buckets with these names, §9.1).
_LITERAL_OPERATIONS = frozenset({"health", "stats", "metrics"})
_BUCKET_OPERATIONS = {
    "GET": "list_objects",
    "PUT": "create_bucket",
    "DELETE": "delete_bucket",
    "HEAD": "head_bucket",
    "POST": "post_bucket",
}
_OBJECT_OPERATIONS = {
    "GET": "get_object",
    "PUT": "put_object",
    "DELETE": "delete_object",
    "HEAD": "head_object",
    "POST": "post_object",
}


def method_label(method: str) -> str:
    return method if method in STANDARD_METHODS else "OTHER"


def operation_label(method: str, bucket: str | None, key: str | None) -> str:
    """The ``operation`` label of §9.1, from the request's shape (not from our handler names)."""
    if bucket is None:
        return {"GET": "list_buckets", "HEAD": "head_root"}.get(method, "unknown")
    if key is None:
        if bucket in _LITERAL_OPERATIONS:
            return bucket
        return _BUCKET_OPERATIONS.get(method, "unknown")
    return _OBJECT_OPERATIONS.get(method, "unknown")


@dataclass(frozen=True)
class CacheReading:
    hits: int
    misses: int
    size_bytes: int
    max_bytes: int
    entries: int


@dataclass(frozen=True)
class EngineReading:
    """What the engine reports at scrape time; every field is a lifetime counter or a level."""

    cache: CacheReading
    codec_available: int
    decisions: Mapping[str, int]
    bytes_saved: int
    background_pending: int


@dataclass(frozen=True)
class BucketSavings:
    bucket: str
    objects: int
    original_bytes: int
    stored_bytes: int  # references included: what the backend really holds
    truncated: bool


class _ScrapeTimeCollector(Collector):
    """Gauges and counters read from the engine on each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "process_peak_rss_bytes",
            "Peak resident set size of the process (getrusage max RSS).",
            value=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
        reader = self._metrics.engine_reader
        if reader is not None:
            yield from _engine_families(reader())
        # Declared even before the first savings walk, so queries over them always resolve.
        yield from _savings_families(self._metrics.savings)


def _engine_families(reading: EngineReading) -> Iterable[Metric]:
    cache = reading.cache
    yield CounterMetricFamily("deltaglider_cache_hits", "Reference-cache hits.", value=cache.hits)
    yield CounterMetricFamily("deltaglider_cache_misses", "Reference-cache misses.", value=cache.misses)
    yield GaugeMetricFamily(
        "deltaglider_cache_size_bytes", "Bytes held by the reference cache.", value=cache.size_bytes
    )
    yield GaugeMetricFamily("deltaglider_cache_entries", "References in the cache.", value=cache.entries)
    yield GaugeMetricFamily(
        "deltaglider_cache_max_bytes", "Configured reference-cache capacity.", value=cache.max_bytes
    )
    if cache.max_bytes > 0:
        yield GaugeMetricFamily(
            "deltaglider_cache_utilization_ratio",
            "Reference-cache size / capacity.",
            value=cache.size_bytes / cache.max_bytes,
        )
    lookups = cache.hits + cache.misses
    if lookups > 0:
        yield GaugeMetricFamily(
            "deltaglider_cache_miss_rate_ratio",
            "Lifetime reference-cache misses / lookups.",
            value=cache.misses / lookups,
        )
    yield GaugeMetricFamily(
        "deltaglider_codec_semaphore_available",
        "Free xdelta3 permits (0 = saturated).",
        value=reading.codec_available,
    )
    decisions = CounterMetricFamily(
        "deltaglider_delta_decisions", "Storage decision per stored object.", labels=["decision"]
    )
    for decision in DECISIONS:
        decisions.add_metric([decision], reading.decisions.get(decision, 0))
    yield decisions
    yield CounterMetricFamily(
        "deltaglider_delta_bytes_saved",
        "Original minus delta bytes of every committed delta.",
        value=reading.bytes_saved,
    )
    # Ours: the background-encoding queue (objects stored as-is, waiting for their delta).
    yield GaugeMetricFamily(
        "deltaglider_background_encodes_pending",
        "Objects waiting for background delta encoding.",
        value=reading.background_pending,
    )


def _savings_families(savings: list[BucketSavings]) -> Iterable[Metric]:
    """Ours: per-bucket savings from the last /_/stats-style walk (references counted as stored)."""
    families = {
        "objects": GaugeMetricFamily(
            "deltaglider_bucket_objects", "Objects in the bucket (savings walk).", labels=["bucket"]
        ),
        "original": GaugeMetricFamily(
            "deltaglider_bucket_original_bytes",
            "Bytes the bucket's objects would take stored as-is.",
            labels=["bucket"],
        ),
        "stored": GaugeMetricFamily(
            "deltaglider_bucket_stored_bytes",
            "Bytes the backend holds for the bucket, references included.",
            labels=["bucket"],
        ),
        "ratio": GaugeMetricFamily(
            "deltaglider_bucket_savings_ratio",
            "1 - stored/original for the bucket (0 when empty).",
            labels=["bucket"],
        ),
        "truncated": GaugeMetricFamily(
            "deltaglider_bucket_savings_truncated",
            "1 when the savings walk stopped at its object limit.",
            labels=["bucket"],
        ),
    }
    for row in savings:
        families["objects"].add_metric([row.bucket], row.objects)
        families["original"].add_metric([row.bucket], row.original_bytes)
        families["stored"].add_metric([row.bucket], row.stored_bytes)
        ratio = 1 - row.stored_bytes / row.original_bytes if row.original_bytes else 0.0
        families["ratio"].add_metric([row.bucket], ratio)
        families["truncated"].add_metric([row.bucket], 1 if row.truncated else 0)
    yield from families.values()


class Metrics:
    """The process's registry and every metric the proxy exports."""

    def __init__(self, *, version: str, backend_type: str) -> None:
        # No ``*_created`` series: upstream exports none, and they double the output for nothing.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        # [D] §9.1: the standard process collector, which brings process_start_time_seconds.
        ProcessCollector(registry=self.registry)
        r = self.registry
        build = Gauge("deltaglider_build_info", "Build information.", ["version", "backend_type"], registry=r)
        build.labels(version=version, backend_type=backend_type).set(1)
        self.http_requests = Counter(
            "deltaglider_http_requests", "S3 requests.", ["method", "status", "operation"], registry=r
        )
        self.http_duration = Histogram(
            "deltaglider_http_request_duration_seconds",
            "S3 request duration.",
            ["method", "operation"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=r,
        )
        self.http_request_size = Histogram(
            "deltaglider_http_request_size_bytes",
            "S3 request Content-Length.",
            ["method"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.http_response_size = Histogram(
            "deltaglider_http_response_size_bytes",
            "S3 response Content-Length.",
            ["method"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.compression_ratio = Histogram(
            "deltaglider_delta_compression_ratio",
            "Delta size / original size of every xdelta3 encode, kept or not.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.encode_duration = Histogram(
            "deltaglider_delta_encode_duration_seconds",
            "xdelta3 encode duration.",
            buckets=CODEC_BUCKETS,
            registry=r,
        )
        self.decode_duration = Histogram(
            "deltaglider_delta_decode_duration_seconds",
            "xdelta3 decode duration.",
            buckets=CODEC_BUCKETS,
            registry=r,
        )
        self.auth_attempts = Counter(
            "deltaglider_auth_attempts", "SigV4 verification outcomes.", ["result"], registry=r
        )
        self.auth_failures = Counter(
            "deltaglider_auth_failures", "SigV4 failures by reason.", ["reason"], registry=r
        )
        # §9.2 additions.
        self.admin_logins = Counter(
            "deltaglider_admin_logins", "Admin logins.", ["method", "result"], registry=r
        )
        self.rate_limit_lockouts = Counter(
            "deltaglider_rate_limit_lockouts", "Rate-limit lockouts.", ["surface"], registry=r
        )
        self.admin_sessions = Gauge("deltaglider_admin_sessions", "Live admin sessions.", registry=r)
        self.iam_users = Gauge("deltaglider_iam_users", "IAM users.", registry=r)
        self.config_sync_operations = Counter(
            "deltaglider_config_sync_operations",
            "Config-sync operations.",
            ["op", "result"],
            registry=r,
        )
        self.config_sync_last_success = Gauge(
            "deltaglider_config_sync_last_success_timestamp_seconds",
            "Last successful config sync (unix seconds).",
            ["op"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "deltaglider_quota_rejections", "Writes refused by quota or freeze.", ["reason"], registry=r
        )
        self.audit_events = Counter("deltaglider_audit_events", "Audit events.", ["action"], registry=r)
        # §8.5 [D]: replication runs (rule names are bounded by config). Registered now so
        # dashboards and alert rules resolve; series appear once replication runs exist.
        self.replication_runs = Counter(
            "deltaglider_replication_runs", "Replication runs.", ["rule", "status"], registry=r
        )
        self.replication_objects_copied = Counter(
            "deltaglider_replication_objects_copied", "Objects copied by replication.", ["rule"], registry=r
        )
        self.replication_bytes_copied = Counter(
            "deltaglider_replication_bytes_copied", "Bytes copied by replication.", ["rule"], registry=r
        )
        self.replication_errors = Counter(
            "deltaglider_replication_errors", "Replication errors.", ["rule"], registry=r
        )
        self.replication_last_success = Gauge(
            "deltaglider_replication_last_success_timestamp_seconds",
            "Last successful replication run (unix seconds).",
            ["rule"],
            registry=r,
        )
        # Ours: latency of every call the engine makes to a storage backend.
        self.backend_duration = Histogram(
            "deltaglider_backend_request_duration_seconds",
            "Storage backend call duration (read/list: until the first byte/entry).",
            ["backend", "operation"],
            buckets=BACKEND_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "deltaglider_backend_errors",
            "Storage backend calls that raised (not-found answers are not errors).",
            ["backend", "operation"],
            registry=r,
        )
        self._prime()
        self.engine_reader: Callable[[], EngineReading] | None = None
        self.savings: list[BucketSavings] = []
        r.register(_ScrapeTimeCollector(self))

    def _prime(self) -> None:
        """Create the series of bounded label sets at zero, so rate() and alerts see them from
        the first scrape instead of after the first event."""
        for result in ("success", "failure"):
            self.auth_attempts.labels(result=result)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason=reason)
        for method in ("bootstrap", "login_as", "oauth"):
            for result in ("success", "failure"):
                self.admin_logins.labels(method=method, result=result)
        for surface in ("s3", "admin_login", "oauth", "recover"):
            self.rate_limit_lockouts.labels(surface=surface)
        for op in ("upload", "download"):
            for result in ("success", "failure", "noop"):
                self.config_sync_operations.labels(op=op, result=result)
        for reason in ("exceeded", "frozen"):
            self.quota_rejections.labels(reason=reason)

    # ------------------------------------------------------------------ events

    def observe_request(
        self,
        method: str,
        operation: str,
        status: int,
        seconds: float,
        request_bytes: int | None,
        response_bytes: int | None,
    ) -> None:
        method = method_label(method)
        self.http_requests.labels(method=method, status=str(status), operation=operation).inc()
        self.http_duration.labels(method=method, operation=operation).observe(seconds)
        if request_bytes is not None:
            self.http_request_size.labels(method=method).observe(request_bytes)
        if response_bytes is not None:
            self.http_response_size.labels(method=method).observe(response_bytes)

    def observe_codec(self, kind: str, seconds: float, input_bytes: int, output_bytes: int) -> None:
        """One finished xdelta3 run (the codec's observer)."""
        if kind == "encode":
            self.encode_duration.observe(seconds)
            if input_bytes > 0:
                self.compression_ratio.observe(output_bytes / input_bytes)
        else:
            self.decode_duration.observe(seconds)

    def auth_succeeded(self) -> None:
        self.auth_attempts.labels(result="success").inc()

    def auth_failed(self, reason: str) -> None:
        self.auth_attempts.labels(result="failure").inc()
        self.auth_failures.labels(reason=reason).inc()

    def quota_rejected(self, reason: str) -> None:
        self.quota_rejections.labels(reason=reason).inc()

    def audit_recorded(self, action: str) -> None:
        self.audit_events.labels(action=action).inc()

    def observe_backend(self, backend: str, operation: str, seconds: float, *, failed: bool) -> None:
        self.backend_duration.labels(backend=backend, operation=operation).observe(seconds)
        if failed:
            self.backend_errors.labels(backend=backend, operation=operation).inc()

    # ------------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE
