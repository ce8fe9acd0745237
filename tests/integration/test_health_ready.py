"""``/_/health`` (liveness, never probes) and ``/_/ready`` (probes the backend): readiness flips
to 503 while the S3 backend server is stopped and back to 200 once it returns (control-plane.md
§1.2, §6.7)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.backends import MOTO_KEY, MOTO_SECRET, BackendUnderTest
from tests.support.s3servers import MotoServer
from tests.support.server import ProxyServer

READY = {"status": "ready", "backend": "ready", "config_db": "absent", "backends": {"default": "ready"}}
HEALTH_FIELDS = {
    "status",
    "backend",
    "peak_rss_bytes",
    "cache_size_bytes",
    "cache_max_bytes",
    "cache_entries",
    "cache_utilization_pct",
}


def _get(server: ProxyServer, path: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{server.endpoint}{path}", timeout=30)
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


def _ready_within(server: ProxyServer, status: int, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        code, doc = _get(server, "/_/ready")
        if code == status or time.monotonic() > deadline:
            assert code == status, doc
            return doc
        time.sleep(0.2)


def _metric_lines(server: ProxyServer, name: str) -> list[str]:
    text = requests.get(f"{server.endpoint}/_/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.mark.filesystem_only
def test_health_is_liveness_with_cache_figures(proxy: ProxyServer) -> None:
    code, doc = _get(proxy, "/_/health")
    assert code == 200
    assert set(doc) == HEALTH_FIELDS
    assert doc["status"] == "healthy" and doc["backend"] == "ready"
    assert doc["peak_rss_bytes"] > 1024 * 1024
    assert doc["cache_max_bytes"] == 100 * 1024 * 1024
    assert 0 <= doc["cache_utilization_pct"] <= 100
    assert "version" not in doc  # anti-fingerprinting


@pytest.mark.filesystem_only
def test_ready_on_a_filesystem_backend(proxy: ProxyServer) -> None:
    code, doc = _get(proxy, "/_/ready")
    assert code == 200
    assert doc == READY


def test_readiness_follows_the_s3_backend(tmp_path: Path) -> None:
    moto = MotoServer(log_path=tmp_path / "moto.log").start()
    proxy = ProxyServer(
        data_dir=tmp_path / "data",
        env={
            **BackendUnderTest("moto", tmp_path, moto.endpoint, MOTO_KEY, MOTO_SECRET).proxy_env(tmp_path),
            "DGP_READY_TIMEOUT_SECS": "2",
            "DGP_READY_RETRIES": "0",
        },
    )
    try:
        proxy.start()
        doc = _ready_within(proxy, 200)
        assert doc["status"] == "ready" and doc["backend"] == "ready"
        s3 = make_client(proxy.endpoint)
        s3.create_bucket(Bucket="probe-me")
        with pytest.raises(ClientError):
            s3.head_object(Bucket="probe-me", Key="absent")  # a not-found answer, not a backend error

        moto.stop()
        with pytest.raises(ClientError):
            s3.list_objects_v2(Bucket="probe-me")
        errors = _metric_lines(proxy, "deltaglider_backend_errors_total")
        # The listing's first backend call (the bucket check, or the listing itself) failed.
        assert any(
            ('operation="bucket_exists"' in line or 'operation="list"' in line) and not line.endswith(" 0.0")
            for line in errors
        ), errors
        assert not any('operation="head"' in line for line in errors), errors
        assert 'deltaglider_build_info{backend_type="s3"' in requests.get(f"{proxy.endpoint}/_/metrics").text
        doc = _ready_within(proxy, 503)
        assert doc["status"] == "not_ready"
        assert doc["backend"] in ("unreachable", "timeout")
        assert doc["backends"] == {"default": doc["backend"]}
        code, health = _get(proxy, "/_/health")
        assert code == 200 and health["status"] == "healthy"  # liveness does not follow the backend

        moto.start()  # same port
        doc = _ready_within(proxy, 200)
        assert doc["backend"] == "ready"
        assert "readiness: backend default attempt 1 failed" in proxy.log()
    finally:
        proxy.stop()
        moto.stop()


def test_ready_answers_from_cache_within_its_ttl(tmp_path: Path) -> None:
    moto = MotoServer(log_path=tmp_path / "moto.log").start()
    proxy = ProxyServer(
        data_dir=tmp_path / "data",
        env={
            **BackendUnderTest("moto", tmp_path, moto.endpoint, MOTO_KEY, MOTO_SECRET).proxy_env(tmp_path),
            "DGP_READY_CACHE_TTL_SECS": "600",
        },
    )
    try:
        proxy.start()
        assert _get(proxy, "/_/ready") == (200, READY)
        moto.stop()
        code, doc = _get(proxy, "/_/ready")
        assert code == 200 and doc["backend"] == "cached"  # no probe until the TTL runs out
    finally:
        proxy.stop()
        moto.stop()
