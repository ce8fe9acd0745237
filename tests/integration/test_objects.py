"""PUT/GET/HEAD/DELETE/COPY through boto3 against the real server, bytes compared by SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.server import ProxyServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


@pytest.mark.parametrize("size", [0, 1, 1000, 1024 * 1024 + 7])
def test_put_get_round_trip(s3: Any, bucket: str, size: int) -> None:
    data = os.urandom(size)
    put = s3.put_object(Bucket=bucket, Key="dir/blob.bin", Body=data)
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/blob.bin")
    assert sha(got["Body"].read()) == sha(data)
    assert got["ContentLength"] == size
    assert got["ETag"] == put["ETag"]


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a/b",
        "a/b/c.txt",
        "folder/",
        "space and+plus%percent",
        "unicode/ünïcødé/日本語.zip",
        "x" * 1024,
        "deep/" + "/".join(["seg"] * 50) + "/file",
        "double//slash",
        ".env",
        "trailing.delta.txt",
        "tab\there",
    ],
)
def test_tricky_keys_round_trip(s3: Any, bucket: str, key: str) -> None:
    data = key.encode() * 3
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert key in listed


def test_key_and_its_prefix_coexist(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"file a")
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"file a/b")
    s3.put_object(Bucket=bucket, Key="a/b/c", Body=b"file a/b/c")
    s3.put_object(Bucket=bucket, Key="x/y", Body=b"x/y first")
    s3.put_object(Bucket=bucket, Key="x", Body=b"x second")
    for key, body in [
        ("a", b"file a"),
        ("a/b", b"file a/b"),
        ("a/b/c", b"file a/b/c"),
        ("x", b"x second"),
        ("x/y", b"x/y first"),
    ]:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["a", "a/b", "a/b/c", "x", "x/y"]
    s3.delete_object(Bucket=bucket, Key="a/b")
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"file a"
    assert s3.get_object(Bucket=bucket, Key="a/b/c")["Body"].read() == b"file a/b/c"


def test_metadata_and_headers_round_trip(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key="doc.txt",
        Body=b"hello",
        ContentType="text/plain; charset=utf-8",
        ContentEncoding="identity",
        ContentDisposition='attachment; filename="doc.txt"',
        CacheControl="max-age=60",
        ContentLanguage="en",
        Expires="Wed, 21 Oct 2037 07:28:00 GMT",
        Metadata={"build": "42", "Owner": "team-a"},
    )
    for response in (
        s3.head_object(Bucket=bucket, Key="doc.txt"),
        s3.get_object(Bucket=bucket, Key="doc.txt"),
    ):
        assert response["ContentType"] == "text/plain; charset=utf-8"
        assert response["ContentEncoding"] == "identity"
        assert response["ContentDisposition"] == 'attachment; filename="doc.txt"'
        assert response["CacheControl"] == "max-age=60"
        assert response["ContentLanguage"] == "en"
        assert response["Metadata"] == {"build": "42", "owner": "team-a"}
        assert response["ContentLength"] == 5


def test_overwrite_replaces(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"one", Metadata={"v": "1"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"two-two")
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["ContentLength"] == 7 and head["Metadata"] == {}
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two-two"


def test_delete_is_idempotent(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="gone", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.delete_object(Bucket=bucket, Key="gone")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="gone")
    assert error_code(exc) == "NoSuchKey"


def test_missing_key_is_404_with_xml(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="nope/missing.bin")
    assert error_code(exc) == "NoSuchKey"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    with pytest.raises(ClientError) as head_exc:
        s3.head_object(Bucket=bucket, Key="nope/missing.bin")
    assert head_exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_delete_objects_quiet_and_verbose(s3: Any, bucket: str) -> None:
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    verbose = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "d/0"}, {"Key": "d/1"}, {"Key": "never-existed"}]}
    )
    assert sorted(d["Key"] for d in verbose["Deleted"]) == ["d/0", "d/1", "never-existed"]
    quiet = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "d/2"}, {"Key": "d/3"}], "Quiet": True}
    )
    assert "Deleted" not in quiet
    remaining = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert remaining == ["d/4"]
    bad = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "bad/../key"}]})
    assert bad["Errors"][0]["Code"] == "InvalidArgument"


def test_copy_object_directives(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload", ContentType="app/x", Metadata={"a": "1"})
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == s3.head_object(Bucket=bucket, Key="src")["ETag"]
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["ContentType"] == "app/x" and head["Metadata"] == {"a": "1"}
    s3.copy_object(
        Bucket=bucket,
        Key="dst2",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        ContentType="text/new",
        Metadata={"b": "2"},
    )
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert head["ContentType"] == "text/new" and head["Metadata"] == {"b": "2"}
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"payload"


def test_copy_source_conditionals(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="src", Body=b"payload")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch='"0000"'
        )
    assert error_code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfNoneMatch=etag
        )
    assert error_code(exc) == "PreconditionFailed"
    s3.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag
    )
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "missing"})
    assert error_code(exc) == "NoSuchKey"


def test_checksums_off_and_on(proxy: ProxyServer, bucket: str) -> None:
    plain = make_client(
        proxy.endpoint,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    plain.put_object(Bucket=bucket, Key="plain", Body=b"no checksum")
    assert plain.get_object(Bucket=bucket, Key="plain")["Body"].read() == b"no checksum"
    for algorithm in ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"):
        client = make_client(proxy.endpoint)
        body = f"data for {algorithm}".encode() * 1000
        put = client.put_object(Bucket=bucket, Key=f"sum-{algorithm}", Body=body, ChecksumAlgorithm=algorithm)
        got = client.get_object(Bucket=bucket, Key=f"sum-{algorithm}", ChecksumMode="ENABLED")
        assert got["Body"].read() == body
        field = f"Checksum{algorithm}"
        assert got[field] == put[field]


def test_wrong_checksum_header_is_bad_digest(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad", Body=b"abc", ChecksumCRC32="AAAAAA==")
    assert error_code(exc) == "BadDigest"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad", Body=b"abc", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")
    assert error_code(exc) == "BadDigest"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_hostile_keys_are_rejected_and_touch_nothing(s3: Any, bucket: str, data_dir: Path) -> None:
    before = sorted(p.name for p in data_dir.parent.iterdir())
    for key in ["../../etc/passwd", "a/../../b", "./x", "a/./b", "../"]:
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket=bucket, Key=key, Body=b"evil")
        assert error_code(exc) == "InvalidArgument", key
    assert sorted(p.name for p in data_dir.parent.iterdir()) == before
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
