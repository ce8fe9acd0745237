"""``GET /_/stats``: savings accounting per bucket and overall, behind the proxy's credentials."""

from __future__ import annotations

from typing import Any

import requests

from tests.support.server import ProxyServer
from tests.support.signing import signed_headers


def _stats(proxy: ProxyServer, query: str = "") -> requests.Response:
    url = f"{proxy.endpoint}/_/stats{query}"
    return requests.get(url, headers=signed_headers("GET", url))


def test_stats_count_objects_and_bytes(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/notes.txt", Body=b"x" * 1000)
    s3.put_object(Bucket=bucket, Key="b/readme.md", Body=b"y" * 500)
    response = _stats(proxy, f"?bucket={bucket}")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["total_objects"] == 2 and doc["objects"] == 2
    assert doc["total_original_size"] == 1500
    assert doc["total_stored_size"] == 1500
    assert doc["savings_percentage"] == 0.0
    assert doc["truncated"] is False
    assert [(d["prefix"], d["objects"], d["original_bytes"]) for d in doc["deltaspaces"]] == [
        ("a", 1, 1000),
        ("b", 1, 500),
    ]
    overall = _stats(proxy).json()
    assert overall["total_objects"] >= 2
    assert any(b["bucket"] == bucket for b in overall["buckets"])


def test_stats_need_credentials(proxy: ProxyServer, bucket: str) -> None:
    assert requests.get(f"{proxy.endpoint}/_/stats").status_code == 403
    assert _stats(proxy, "?bucket=no-such-bucket-zz").status_code == 404
