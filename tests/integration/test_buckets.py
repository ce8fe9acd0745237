"""Bucket operations and the sub-resources that must answer 501 instead of falling through."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.support.server import ProxyServer
from tests.support.signing import signed_headers


def test_create_list_head_delete(s3: Any) -> None:
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)  # idempotent for the owner (us-east-1)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert (
        s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"
    )
    assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") in (None, "us-east-1")
    s3.put_object(Bucket=name, Key="deep/file", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert exc.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3.delete_object(Bucket=name, Key="deep/file")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


@pytest.mark.parametrize("name", ["UPPER", "ab", "a" * 64, "bad_name", "-lead", "192.168.1.1", "a..b"])
def test_invalid_bucket_names(s3: Any, name: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=name)
    assert exc.value.response["Error"]["Code"] in ("InvalidBucketName",)


def test_writes_never_create_buckets(s3: Any) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="never-created-bucket", Key="k", Body=b"x")
    assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


def test_versioning_and_acl_stubs(s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    assert s3.get_bucket_acl(Bucket=bucket)["Grants"][0]["Permission"] == "FULL_CONTROL"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "?policy"),
        ("PUT", "?policy"),
        ("DELETE", "?cors"),
        ("GET", "?lifecycle"),
        ("PUT", "?versioning"),
        ("GET", "?tagging"),
        ("PUT", "/obj?retention"),
        ("POST", "/obj?restore"),
        ("GET", "/obj?tagging"),
    ],
)
def test_unsupported_subresources_are_501(
    proxy: ProxyServer, s3: Any, bucket: str, method: str, suffix: str
) -> None:
    s3.put_object(Bucket=bucket, Key="obj", Body=b"keep me")
    url = f"{proxy.endpoint}/{bucket}{suffix}"
    signed = signed_headers(method, url, b"<x/>" if method in ("PUT", "POST") else b"")
    response = requests.request(
        method, url, headers=signed, data=b"<x/>" if method in ("PUT", "POST") else b""
    )
    assert response.status_code == 501, response.text
    assert "<Code>NotImplemented</Code>" in response.text
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"keep me"
    assert s3.head_bucket(Bucket=bucket)
