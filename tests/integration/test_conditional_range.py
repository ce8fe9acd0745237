"""Range GETs (incl. suffix and open ranges) and conditional requests on GET/HEAD/PUT."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

DATA = random.Random(20261125).randbytes(10_000)  # fixed: xdist workers must agree on ids


@pytest.fixture
def obj(s3: Any, bucket: str) -> tuple[str, str]:
    etag = s3.put_object(Bucket=bucket, Key="r.bin", Body=DATA)["ETag"]
    return bucket, etag


@pytest.mark.parametrize(
    ("header", "expected", "content_range"),
    [
        ("bytes=0-0", DATA[0:1], "bytes 0-0/10000"),
        ("bytes=100-199", DATA[100:200], "bytes 100-199/10000"),
        ("bytes=9000-", DATA[9000:], "bytes 9000-9999/10000"),
        ("bytes=-500", DATA[-500:], "bytes 9500-9999/10000"),
        ("bytes=9990-20000", DATA[9990:], "bytes 9990-9999/10000"),
        ("bytes=-20000", DATA, "bytes 0-9999/10000"),
    ],
    ids=["first-byte", "middle", "open-ended", "suffix", "past-end", "suffix-past-start"],
)
def test_ranges(s3: Any, obj: tuple[str, str], header: str, expected: bytes, content_range: str) -> None:
    got = s3.get_object(Bucket=obj[0], Key="r.bin", Range=header)
    assert got["Body"].read() == expected
    assert got["ContentRange"] == content_range
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206


def test_unsatisfiable_range(s3: Any, obj: tuple[str, str]) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=obj[0], Key="r.bin", Range="bytes=10000-")
    assert exc.value.response["Error"]["Code"] == "InvalidRange"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_ignored_range_syntax_returns_everything(s3: Any, obj: tuple[str, str]) -> None:
    got = s3.get_object(Bucket=obj[0], Key="r.bin", Range="bytes=0-1,5-6")
    assert got["Body"].read() == DATA


def test_get_conditionals(s3: Any, obj: tuple[str, str]) -> None:
    bucket, etag = obj
    assert s3.get_object(Bucket=bucket, Key="r.bin", IfMatch=etag)["Body"].read() == DATA
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r.bin", IfMatch='"abc"')
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r.bin", IfNoneMatch=etag)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    future = datetime.now(UTC) + timedelta(hours=1)
    past = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r.bin", IfModifiedSince=future)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    assert s3.get_object(Bucket=bucket, Key="r.bin", IfModifiedSince=past)["Body"].read() == DATA
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r.bin", IfUnmodifiedSince=past)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="r.bin", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_put_if_none_match_is_create_only(s3: Any, obj: tuple[str, str]) -> None:
    bucket, _ = obj
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="r.bin", Body=b"other", IfNoneMatch="*")
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    s3.put_object(Bucket=bucket, Key="fresh.bin", Body=b"new", IfNoneMatch="*")
    assert s3.get_object(Bucket=bucket, Key="r.bin")["Body"].read() == DATA


def test_put_if_match(s3: Any, obj: tuple[str, str]) -> None:
    bucket, etag = obj
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="r.bin", Body=b"other", IfMatch='"0000"')
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    s3.put_object(Bucket=bucket, Key="r.bin", Body=b"replaced", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="r.bin")["Body"].read() == b"replaced"
