"""SigV4 over real HTTP: header auth, presigned URLs, streaming chunk signatures, and each
authentication error provoked with its code, status and XML body."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.assertions import assert_error
from tests.support.server import ACCESS_KEY, ProxyServer
from tests.support.signing import presigned_url, signed_chunked_upload, signed_headers


def test_anonymous_request_is_denied(proxy: ProxyServer, bucket: str) -> None:
    assert_error(requests.get(f"{proxy.endpoint}/{bucket}"), 403, "AccessDenied")
    assert_error(requests.put(f"{proxy.endpoint}/{bucket}/k", data=b"x"), 403, "AccessDenied")


def test_unknown_access_key(proxy: ProxyServer) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id="UNKNOWNKEY000000000",
        aws_secret_access_key="x" * 40,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        client.list_buckets()
    assert exc.value.response["Error"]["Code"] == "AccessDenied"  # no key oracle (§2.4.4 [D])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_wrong_secret(proxy: ProxyServer) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="wrong" * 8,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as exc:
        client.list_buckets()
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_tampered_signed_header(proxy: ProxyServer, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/k"
    headers = signed_headers("PUT", url, b"data", {"x-amz-meta-a": "1"})
    headers["x-amz-meta-a"] = "2"
    assert_error(requests.put(url, headers=headers, data=b"data"), 403, "SignatureDoesNotMatch")


def test_clock_skew(proxy: ProxyServer, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}"
    for minutes in (-20, 20):
        headers = signed_headers("GET", url, when=datetime.now(UTC) + timedelta(minutes=minutes))
        assert_error(requests.get(url, headers=headers), 403, "RequestTimeTooSkewed")


def test_payload_hash_mismatch_stores_nothing(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    url = f"{proxy.endpoint}/{bucket}/hashed"
    headers = signed_headers(
        "PUT", url, b"original", {"x-amz-content-sha256": hashlib.sha256(b"original").hexdigest()}
    )
    assert_error(requests.put(url, headers=headers, data=b"tampered"), 400, "BadDigest")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="hashed")


def test_presigned_get_and_put(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="shared/file.bin", Body=b"presigned content")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared/file.bin"}, ExpiresIn=60
    )
    response = requests.get(url)
    assert response.status_code == 200 and response.content == b"presigned content"
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up.bin"}, ExpiresIn=60
    )
    assert requests.put(put_url, data=b"uploaded").status_code == 200
    assert s3.get_object(Bucket=bucket, Key="up.bin")["Body"].read() == b"uploaded"
    override = s3.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": bucket,
            "Key": "shared/file.bin",
            "ResponseContentType": "text/x-test",
            "ResponseContentDisposition": "attachment",
        },
        ExpiresIn=60,
    )
    response = requests.get(override)
    assert response.headers["content-type"] == "text/x-test"
    assert response.headers["content-disposition"] == "attachment"


def test_presigned_errors(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="p", Body=b"x")
    url = presigned_url("GET", f"{proxy.endpoint}/{bucket}/p", expires=604801)
    assert_error(requests.get(url), 400, "InvalidArgument")
    good = presigned_url("GET", f"{proxy.endpoint}/{bucket}/p", expires=60)
    tampered = re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, good)
    assert_error(requests.get(tampered), 403, "SignatureDoesNotMatch")
    expired = presigned_url(
        "GET", f"{proxy.endpoint}/{bucket}/p", expires=60, when=datetime.now(UTC) - timedelta(hours=2)
    )
    assert_error(requests.get(expired), 403, "AccessDenied")


def test_signed_streaming_upload(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    payload = os.urandom(200_000)
    url = f"{proxy.endpoint}/{bucket}/streamed.bin"
    headers, body = signed_chunked_upload(url, payload)
    response = requests.put(url, headers=headers, data=body)
    assert response.status_code == 200, response.text
    assert s3.get_object(Bucket=bucket, Key="streamed.bin")["Body"].read() == payload


def test_signed_streaming_bad_chunk_signature_stores_nothing(
    proxy: ProxyServer, s3: Any, bucket: str
) -> None:
    url = f"{proxy.endpoint}/{bucket}/streamed-bad.bin"
    headers, body = signed_chunked_upload(url, os.urandom(150_000), corrupt_chunk=1)
    assert_error(requests.put(url, headers=headers, data=body), 403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="streamed-bad.bin")


def test_probe_is_unauthenticated(proxy: ProxyServer) -> None:
    response = requests.head(proxy.endpoint + "/")
    assert response.status_code == 200
    assert response.headers["x-amz-request-id"] == "0"


def test_every_response_has_request_id_and_security_headers(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    meta = s3.put_object(Bucket=bucket, Key="k", Body=b"v")["ResponseMetadata"]["HTTPHeaders"]
    assert meta["x-amz-request-id"] and meta["x-content-type-options"] == "nosniff"
    assert meta["x-frame-options"] == "DENY"


def test_signature_v2_presigned_url_is_refused_with_a_hint(proxy: ProxyServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="v2", Body=b"x")
    v2 = make_client(proxy.endpoint, signature_version="s3")
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "v2"}, ExpiresIn=60)
    response = requests.get(url)
    assert_error(response, 400, "InvalidRequest")
    assert "AWS4-HMAC-SHA256" in response.text
