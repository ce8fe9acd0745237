"""``GET /_/metrics`` after a scripted workload: the whole catalogue of control-plane.md §9, with
its exact names, types, labels and buckets, and counters that moved by what the workload did."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import make_client
from tests.support.server import ProxyServer
from tests.support.signing import presigned_url, signed_headers

TOKEN = "metrics-token-5f1c0d"
KIB = 1024
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1024, 10240, 102400, 1024000, 10240000, 102400000)
RATIO_BUCKETS = (0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CODEC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# name → (type, label names) — §9.1 and §9.2, exactly as specified.
CATALOGUE: dict[str, tuple[str, set[str]]] = {
    "process_start_time_seconds": ("gauge", set()),
    "deltaglider_build_info": ("gauge", {"version", "backend_type"}),
    "process_peak_rss_bytes": ("gauge", set()),
    "deltaglider_http_requests": ("counter", {"method", "status", "operation"}),
    "deltaglider_http_request_duration_seconds": ("histogram", {"method", "operation"}),
    "deltaglider_http_request_size_bytes": ("histogram", {"method"}),
    "deltaglider_http_response_size_bytes": ("histogram", {"method"}),
    "deltaglider_delta_compression_ratio": ("histogram", set()),
    "deltaglider_delta_bytes_saved": ("counter", set()),
    "deltaglider_delta_encode_duration_seconds": ("histogram", set()),
    "deltaglider_delta_decode_duration_seconds": ("histogram", set()),
    "deltaglider_delta_decisions": ("counter", {"decision"}),
    "deltaglider_cache_hits": ("counter", set()),
    "deltaglider_cache_misses": ("counter", set()),
    "deltaglider_cache_size_bytes": ("gauge", set()),
    "deltaglider_cache_entries": ("gauge", set()),
    "deltaglider_cache_max_bytes": ("gauge", set()),
    "deltaglider_cache_utilization_ratio": ("gauge", set()),
    "deltaglider_cache_miss_rate_ratio": ("gauge", set()),
    "deltaglider_codec_semaphore_available": ("gauge", set()),
    "deltaglider_auth_attempts": ("counter", {"result"}),
    "deltaglider_auth_failures": ("counter", {"reason"}),
    "deltaglider_admin_logins": ("counter", {"method", "result"}),
    "deltaglider_rate_limit_lockouts": ("counter", {"surface"}),
    "deltaglider_admin_sessions": ("gauge", set()),
    "deltaglider_iam_users": ("gauge", set()),
    "deltaglider_config_sync_operations": ("counter", {"op", "result"}),
    "deltaglider_quota_rejections": ("counter", {"reason"}),
    "deltaglider_audit_events": ("counter", {"action"}),
}
# Labelled families with no series until their subsystem acts: only HELP/TYPE lines yet.
DECLARED_ONLY = {
    "deltaglider_config_sync_last_success_timestamp_seconds": "gauge",
    "deltaglider_replication_runs": "counter",
    "deltaglider_replication_objects_copied": "counter",
    "deltaglider_replication_bytes_copied": "counter",
    "deltaglider_replication_errors": "counter",
    "deltaglider_replication_last_success_timestamp_seconds": "gauge",
}
PROCESS = ("process_cpu_seconds", "process_open_fds", "process_max_fds", "process_resident_memory_bytes")


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(found) == 1 or not labels, (name, labels, found)
        return sum(found)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("metrics")
    config = root / "config.yaml"
    config.write_text("storage:\n  buckets:\n    frozen-vault:\n      quota_bytes: 0\n")
    server = ProxyServer(
        data_dir=root / "data",
        env={"DGP_METRICS_TOKEN": TOKEN, "DGP_DELTA_ENCODING": "inline"},
        args=["--config", str(config)],
    ).start()
    yield server
    server.stop()


def scrape(server: ProxyServer) -> Scrape:
    response = requests.get(f"{server.endpoint}/_/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def _workload(server: ProxyServer) -> dict[str, Any]:
    s3 = make_client(server.endpoint)
    s3.create_bucket(Bucket="metrics-run")
    v1 = random.Random(7).randbytes(256 * KIB)
    v2 = v1[: 100 * KIB] + b"a small change" + v1[100 * KIB :]
    s3.put_object(Bucket="metrics-run", Key="rel/app-1.zip", Body=v1)  # becomes the reference
    s3.put_object(Bucket="metrics-run", Key="rel/app-2.zip", Body=v2)  # a delta against it
    s3.put_object(Bucket="metrics-run", Key="notes/readme.txt", Body=b"plain text " * 200)  # passthrough
    assert s3.get_object(Bucket="metrics-run", Key="rel/app-2.zip")["Body"].read() == v2  # one decode
    s3.head_object(Bucket="metrics-run", Key="rel/app-1.zip")
    s3.list_objects_v2(Bucket="metrics-run")
    s3.delete_object(Bucket="metrics-run", Key="notes/readme.txt")
    s3.create_bucket(Bucket="frozen-vault")  # creating is allowed; writing into it is not
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="frozen-vault", Key="x.bin", Body=b"refused")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    url = f"{server.endpoint}/metrics-run/rel/app-1.zip"
    assert requests.get(url).status_code == 403  # missing_header
    bad_secret = signed_headers("GET", url, secret_key="not-the-secret-key-000000000000000000000")
    assert requests.get(url, headers=bad_secret).status_code == 403  # invalid_signature
    unknown = signed_headers("GET", url, access_key="AKIDUNKNOWN000000000")
    assert requests.get(url, headers=unknown).status_code == 403  # invalid_access_key
    expired = presigned_url("GET", url, expires=60, when=datetime.now(UTC) - timedelta(hours=2))
    assert requests.get(expired).status_code == 403  # invalid_presigned
    assert requests.request("PROPFIND", url).status_code in (403, 405)  # method="OTHER"
    delta = server.data_dir / "metrics-run" / "deltaspaces" / "rel" / "app-2.zip.delta"
    return {"v1": len(v1), "v2": len(v2), "delta_size": delta.stat().st_size}


@pytest.fixture(scope="module")
def after(server: ProxyServer) -> tuple[Scrape, dict[str, Any]]:
    sizes = _workload(server)
    return scrape(server), sizes


def test_every_catalogue_metric_is_exported_with_its_type_and_labels(after: tuple[Scrape, Any]) -> None:
    metrics, _ = after
    for name, (kind, labels) in CATALOGUE.items():
        family = metrics.families.get(name)
        assert family is not None, f"{name} missing from /_/metrics"
        assert family.type == kind, (name, family.type)
        assert family.samples, f"{name} has no series"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    for name, kind in DECLARED_ONLY.items():
        assert f"# TYPE {name if kind == 'gauge' else name + '_total'} {kind}" in metrics.text, name
    for name in PROCESS:
        assert name in metrics.families, name
    assert "_created" not in metrics.text


def test_histograms_have_the_specified_buckets(after: tuple[Scrape, Any]) -> None:
    metrics, _ = after

    def bounds(name: str, **labels: str) -> tuple[float, ...]:
        found = [
            float(s.labels["le"])
            for s in metrics.samples(name + "_bucket")
            if all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return tuple(sorted(b for b in found if b != float("inf")))

    put = {"method": "PUT", "operation": "put_object"}
    assert bounds("deltaglider_http_request_duration_seconds", **put) == HTTP_BUCKETS
    assert bounds("deltaglider_http_request_size_bytes", method="PUT") == SIZE_BUCKETS
    assert bounds("deltaglider_http_response_size_bytes", method="GET") == SIZE_BUCKETS
    assert bounds("deltaglider_delta_compression_ratio") == RATIO_BUCKETS
    assert bounds("deltaglider_delta_encode_duration_seconds") == CODEC_BUCKETS
    assert bounds("deltaglider_delta_decode_duration_seconds") == CODEC_BUCKETS


def test_counters_moved_by_the_workload(after: tuple[Scrape, dict[str, Any]]) -> None:
    m, sizes = after
    requests_total = "deltaglider_http_requests_total"
    assert m.value(requests_total, method="PUT", operation="put_object", status="200") == 3
    assert m.value(requests_total, method="PUT", operation="put_object", status="403") == 1  # frozen
    assert m.value(requests_total, method="PUT", operation="create_bucket", status="200") == 2
    assert m.value(requests_total, method="GET", operation="get_object", status="200") == 1
    assert m.value(requests_total, method="GET", operation="get_object", status="403") == 4  # auth refusals
    assert m.value(requests_total, method="HEAD", operation="head_object", status="200") == 1
    assert m.value(requests_total, method="GET", operation="list_objects", status="200") == 1
    assert m.value(requests_total, method="DELETE", operation="delete_object", status="204") == 1
    assert m.value(requests_total, method="OTHER", operation="unknown") == 1
    count = "deltaglider_http_request_duration_seconds_count"
    assert m.value(count, method="PUT", operation="put_object") == 4
    # The three accepted PUT bodies, plus the refused one.
    assert m.value("deltaglider_http_request_size_bytes_sum", method="PUT") >= sizes["v1"] + sizes["v2"]
    assert m.value("deltaglider_http_response_size_bytes_sum", method="GET") >= sizes["v2"]

    assert m.value("deltaglider_delta_decisions_total", decision="reference") == 1
    assert m.value("deltaglider_delta_decisions_total", decision="delta") == 1
    assert m.value("deltaglider_delta_decisions_total", decision="passthrough") == 1
    # Only the delta against an existing reference saves bytes; the reference itself saves none.
    assert m.value("deltaglider_delta_bytes_saved_total") == sizes["v2"] - sizes["delta_size"]
    # Two encodes (the reference against itself, app-2 against the reference), one decode.
    assert m.value("deltaglider_delta_encode_duration_seconds_count") == 2
    assert m.value("deltaglider_delta_compression_ratio_count") == 2
    assert m.value("deltaglider_delta_decode_duration_seconds_count") == 1
    assert m.value("deltaglider_cache_hits_total") + m.value("deltaglider_cache_misses_total") >= 2
    assert m.value("deltaglider_cache_entries") == 1
    assert m.value("deltaglider_cache_size_bytes") == sizes["v1"]
    assert m.value("deltaglider_cache_max_bytes") == 100 * 1024 * 1024
    assert m.value("deltaglider_codec_semaphore_available") >= 1

    assert m.value("deltaglider_auth_failures_total", reason="missing_header") == 2  # GET and PROPFIND
    assert m.value("deltaglider_auth_failures_total", reason="invalid_signature") == 1
    assert m.value("deltaglider_auth_failures_total", reason="invalid_access_key") == 1
    assert m.value("deltaglider_auth_failures_total", reason="invalid_presigned") == 1
    assert m.value("deltaglider_auth_failures_total", reason="replay") == 0
    assert m.value("deltaglider_auth_attempts_total", result="failure") == 5
    assert m.value("deltaglider_auth_attempts_total", result="success") >= 9
    assert m.value("deltaglider_quota_rejections_total", reason="frozen") == 1
    assert m.value("deltaglider_quota_rejections_total", reason="exceeded") == 0
    assert m.value("deltaglider_audit_events_total", action="s3_put") == 3
    assert m.value("deltaglider_audit_events_total", action="s3_delete") == 1
    assert m.value("deltaglider_audit_events_total", action="s3_create_bucket") == 2

    build = m.samples("deltaglider_build_info")
    assert [(s.labels["backend_type"], s.value) for s in build] == [("filesystem", 1.0)]
    assert build[0].labels["version"]
    assert abs(m.value("process_start_time_seconds") - time.time()) < 3600
    assert m.value("process_peak_rss_bytes") >= m.value("process_resident_memory_bytes") > 0


def test_backend_calls_are_timed(after: tuple[Scrape, Any]) -> None:
    m, _ = after
    timed = {
        s.labels["operation"]
        for s in m.samples("deltaglider_backend_request_duration_seconds_count")
        if s.labels["backend"] == "default" and s.value > 0
    }
    assert {"write", "read", "head", "list", "delete", "create_bucket"} <= timed


def test_bucket_savings_gauges_follow_the_stats_walk(server: ProxyServer, after: tuple[Scrape, Any]) -> None:
    deadline = time.monotonic() + 20
    while True:
        m = scrape(server)
        objects = [s for s in m.samples("deltaglider_bucket_objects") if s.labels["bucket"] == "metrics-run"]
        if objects or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [s.value for s in objects] == [2]  # app-1, app-2 (readme deleted)
    original = m.value("deltaglider_bucket_original_bytes", bucket="metrics-run")
    stored = m.value("deltaglider_bucket_stored_bytes", bucket="metrics-run")
    assert original == after[1]["v1"] + after[1]["v2"]
    assert 0 < stored < original
    assert m.value("deltaglider_bucket_savings_ratio", bucket="metrics-run") == pytest.approx(
        1 - stored / original
    )


def test_metrics_token_is_required_when_set(server: ProxyServer) -> None:
    url = f"{server.endpoint}/_/metrics"
    missing = requests.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert b"deltaglider_" not in missing.content
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


@pytest.mark.filesystem_only
def test_metrics_are_open_without_a_token(proxy: ProxyServer) -> None:
    response = requests.get(f"{proxy.endpoint}/_/metrics")
    assert response.status_code == 200
    assert "deltaglider_http_requests_total" in response.text


def test_admin_requests_are_not_counted(server: ProxyServer) -> None:
    before = scrape(server).value("deltaglider_http_requests_total")
    for _ in range(3):
        requests.get(f"{server.endpoint}/_/health")
    assert scrape(server).value("deltaglider_http_requests_total") == before
