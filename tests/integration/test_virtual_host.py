"""Virtual-hosted-style addressing: the bucket comes from the Host header (``<bucket>.localhost``),
signed the way a client signs it, and works alongside path-style requests."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from tests.support.assertions import assert_error
from tests.support.server import ProxyServer
from tests.support.signing import signed_headers


def _virtual(proxy: ProxyServer, method: str, bucket: str, path: str, body: bytes = b"") -> requests.Response:
    host = f"{bucket}.localhost:{proxy.port}"
    headers = signed_headers(method, f"http://{host}{path}", body)
    headers["Host"] = host
    return requests.request(method, f"{proxy.endpoint}{path}", headers=headers, data=body)


def test_object_round_trip_via_host_header(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    key = "dir/virtual key+ü.bin"
    path = "/" + quote(key)
    assert _virtual(proxy, "PUT", bucket, path, b"virtual body").status_code == 200
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"virtual body"
    got = _virtual(proxy, "GET", bucket, path)
    assert got.status_code == 200 and got.content == b"virtual body"


def test_bucket_operations_via_host_header(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/1", Body=b"1")
    listing = _virtual(proxy, "GET", bucket, "/?list-type=2&prefix=a%2F")
    assert listing.status_code == 200
    assert f"<Name>{bucket}</Name>" in listing.text and "<Key>a/1</Key>" in listing.text
    assert _virtual(proxy, "HEAD", bucket, "/").status_code == 200


def test_unknown_bucket_via_host_header(proxy: ProxyServer) -> None:
    assert_error(_virtual(proxy, "GET", "no-such-bucket-here", "/k"), 404, "NoSuchBucket")
