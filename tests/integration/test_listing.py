"""ListObjects v1/v2 semantics: prefix, delimiter, pagination, start-after, marker, url encoding."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest
from botocore.exceptions import ClientError

KEYS = [
    "a.txt",
    "b/1.zip",
    "b/2.zip",
    "b/c/3.zip",
    "b-x",
    "rel/v1/app.zip",
    "rel/v2/app.zip",
    "release.txt",
    "zz/",
    "sp ace/ü.bin",
]


@pytest.fixture
def filled(s3: Any, bucket: str) -> str:
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    return bucket


def test_full_listing_is_sorted_with_sizes(s3: Any, filled: str) -> None:
    result = s3.list_objects_v2(Bucket=filled)
    assert [o["Key"] for o in result["Contents"]] == sorted(KEYS, key=lambda k: k.encode())
    assert result["KeyCount"] == len(KEYS)
    for obj in result["Contents"]:
        assert obj["Size"] == len(obj["Key"].encode())


def test_prefix_is_a_string_prefix(s3: Any, filled: str) -> None:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=filled, Prefix="rel")["Contents"]]
    assert keys == ["rel/v1/app.zip", "rel/v2/app.zip", "release.txt"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=filled, Prefix="b/")["Contents"]]
    assert keys == ["b/1.zip", "b/2.zip", "b/c/3.zip"]


def test_delimiter_rolls_up(s3: Any, filled: str) -> None:
    result = s3.list_objects_v2(Bucket=filled, Delimiter="/")
    assert [o["Key"] for o in result["Contents"]] == ["a.txt", "b-x", "release.txt"]
    assert [p["Prefix"] for p in result["CommonPrefixes"]] == ["b/", "rel/", "sp ace/", "zz/"]
    result = s3.list_objects_v2(Bucket=filled, Delimiter="/", Prefix="b/")
    assert [o["Key"] for o in result["Contents"]] == ["b/1.zip", "b/2.zip"]
    assert [p["Prefix"] for p in result["CommonPrefixes"]] == ["b/c/"]
    result = s3.list_objects_v2(Bucket=filled, Delimiter=".")
    assert [p["Prefix"] for p in result["CommonPrefixes"]] == [
        "a.",
        "b/1.",
        "b/2.",
        "b/c/3.",
        "rel/v1/app.",
        "rel/v2/app.",
        "release.",
        "sp ace/ü.",
    ]


def test_v2_pagination_visits_everything_once(s3: Any, filled: str) -> None:
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"Bucket": filled, "MaxKeys": 3}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(KEYS, key=lambda k: k.encode())
    assert pages == 4


def test_paginator_with_delimiter(s3: Any, filled: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    keys: list[str] = []
    prefixes: list[str] = []
    for page in paginator.paginate(Bucket=filled, Delimiter="/", PaginationConfig={"PageSize": 2}):
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == ["a.txt", "b-x", "release.txt"]
    assert prefixes == ["b/", "rel/", "sp ace/", "zz/"]


def test_v1_marker_pagination(s3: Any, filled: str) -> None:
    seen: list[str] = []
    marker = ""
    while True:
        page = s3.list_objects(Bucket=filled, MaxKeys=4, Marker=marker)
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = page.get("NextMarker") or seen[-1]
    assert seen == sorted(KEYS, key=lambda k: k.encode())


def test_start_after(s3: Any, filled: str) -> None:
    ordered = sorted(KEYS, key=lambda k: k.encode())
    for start_after in ("b-x", "b/2.zip", "b/c/3.zip", "b/zzz", "ÿ"):
        result = s3.list_objects_v2(Bucket=filled, StartAfter=start_after)
        keys = [o["Key"] for o in result.get("Contents", [])]
        assert keys == [k for k in ordered if k.encode() > start_after.encode()], start_after


def test_encoding_type_url(s3: Any, filled: str) -> None:
    # botocore decodes url-encoded keys itself when it asked for EncodingType=url
    result = s3.list_objects_v2(Bucket=filled, Prefix="sp ace/", EncodingType="url")
    assert [unquote(o["Key"]) if "%" in o["Key"] else o["Key"] for o in result["Contents"]] == [
        "sp ace/ü.bin"
    ]


def test_empty_and_missing_buckets(s3: Any, bucket: str) -> None:
    result = s3.list_objects_v2(Bucket=bucket)
    assert result["KeyCount"] == 0 and "Contents" not in result
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="no-such-bucket-here")
    assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


def test_bad_continuation_token(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!!not-base64")
    assert exc.value.response["Error"]["Code"] == "InvalidArgument"
