"""Bad input over raw HTTP: each gets its S3 error code, status and XML body, and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import socket
from typing import Any

import requests
from botocore.exceptions import ClientError

from tests.support.assertions import assert_error
from tests.support.server import ProxyServer
from tests.support.signing import presigned_url, signed_headers


def _signed(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.request(method, url, headers=signed_headers(method, url, body, headers), data=body)


def _absent(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "404"
    return False


def test_malformed_xml(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    url = f"{proxy.endpoint}/{bucket}?delete"
    for body in (b"<Delete><Object><Key>keep</Key>", b"not xml at all", b"<Other/>"):
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        assert_error(_signed("POST", url, body, {"content-md5": md5}), 400, "MalformedXML")
    # An entity-expansion bomb is refused, not expanded.
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">]>'
        b"<Delete><Object><Key>&a;</Key></Object></Delete>"
    )
    response = _signed(
        "POST", url, bomb, {"content-md5": base64.b64encode(hashlib.md5(bomb).digest()).decode()}
    )
    assert response.status_code == 400
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"x"


def test_content_md5(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/md5"
    assert_error(_signed("PUT", url, b"data", {"content-md5": "not-base64!"}), 400, "InvalidDigest")
    assert_error(
        _signed("PUT", url, b"data", {"content-md5": base64.b64encode(b"short").decode()}),
        400,
        "InvalidDigest",
    )
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert_error(_signed("PUT", url, b"data", {"content-md5": wrong}), 400, "BadDigest")
    assert _absent(s3, bucket, "md5")
    right = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    assert _signed("PUT", url, b"data", {"content-md5": right}).status_code == 200


def test_key_too_long(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    assert_error(_signed("PUT", f"{proxy.endpoint}/{bucket}/{'k' * 1025}", b"x"), 400, "KeyTooLongError")
    s3.put_object(Bucket=bucket, Key="k" * 1024, Body=b"x")  # the limit itself is fine
    assert s3.get_object(Bucket=bucket, Key="k" * 1024)["Body"].read() == b"x"


def test_metadata_too_large(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/meta"
    assert_error(_signed("PUT", url, b"x", {"x-amz-meta-big": "v" * 2100}), 400, "MetadataTooLarge")
    assert _absent(s3, bucket, "meta")


def test_oversized_header_section(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/big-headers"
    headers = {f"x-amz-meta-h{i}": "v" * 1000 for i in range(20)}
    assert_error(_signed("PUT", url, b"x", headers), 400, "RequestHeaderSectionTooLarge")
    # Far past the limit the HTTP layer itself refuses before any S3 code runs.
    headers = {f"x-amz-meta-h{i}": "v" * 1000 for i in range(200)}
    assert _signed("PUT", url, b"x", headers).status_code == 431
    assert _absent(s3, bucket, "big-headers")


def test_declared_size_over_single_put_limit(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/huge"
    headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(6 * 1024**3),
    }
    # Presigned, because botocore's header signer would replace the streaming payload marker.
    response = requests.put(presigned_url("PUT", url), headers=headers, data=b"0\r\n\r\n")
    assert_error(response, 413, "EntityTooLarge")
    assert _absent(s3, bucket, "huge")


def test_short_body_is_incomplete_and_stores_nothing(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = presigned_url("PUT", f"{proxy.endpoint}/{bucket}/short")
    parts = requests.utils.urlparse(url)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        head = (
            f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b"only-part-of-it")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    assert _absent(s3, bucket, "short")


def test_recreating_an_owned_bucket_is_idempotent(s3: Any, bucket: str) -> None:
    # us-east-1 semantics (storage.md §9): 200 again, and the contents are untouched.
    s3.put_object(Bucket=bucket, Key="kept", Body=b"x")
    assert s3.create_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"x"


def test_method_not_allowed(proxy: ProxyServer, bucket: str) -> None:
    response = _signed("PATCH", f"{proxy.endpoint}/{bucket}/k", b"x")
    assert_error(response, 405, "MethodNotAllowed")


def test_internal_details_stay_in_the_log(proxy: ProxyServer, bucket: str) -> None:
    response = _signed("GET", f"{proxy.endpoint}/{bucket}/missing")
    assert_error(response, 404, "NoSuchKey")
    assert "Traceback" not in response.text and "/" + bucket + "/" not in response.text.split("<Resource>")[0]
