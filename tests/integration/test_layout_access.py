"""Layout access (``x-deltaglider-layout: raw``) through real HTTP: the view a proxy chained in
front of this one has of its S3 backend. Stored objects are written and read by their backend
names with their ``x-amz-meta-dg-*`` records; header-less requests keep the logical view."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.server import ProxyServer

MIB = 1024 * 1024
CREATED = "2026-01-02T03:04:05.123456Z"
QUOTA_BUCKET = "layout-quota"


def _with_layout_header(client: Any, value: str = "raw") -> Any:
    def add_header(request: Any, **_: Any) -> None:
        request.headers["x-deltaglider-layout"] = value

    client.meta.events.register("before-sign.s3.*", add_header)
    return client


@pytest.fixture(scope="module")
def inner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("layout")
    config = root / "config.yaml"
    config.write_text(f"storage:\n  buckets:\n    {QUOTA_BUCKET}:\n      quota_bytes: 1048576\n")
    server = ProxyServer(
        data_dir=root / "data", env={"DGP_LAYOUT_ACCESS": "true"}, args=["--config", str(config)]
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(inner: ProxyServer) -> Any:
    return make_client(inner.endpoint)


@pytest.fixture(scope="module")
def raw(inner: ProxyServer) -> Any:
    return _with_layout_header(make_client(inner.endpoint))


@pytest.fixture
def bkt(plain: Any) -> str:
    name = f"l-{uuid.uuid4().hex[:20]}"
    plain.create_bucket(Bucket=name)
    return name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def record(name: str, data: bytes, note: str, **extra: str) -> dict[str, str]:
    """A record in the S3 form of storage.md §1.5.2 (names without x-amz-meta-)."""
    return {
        "dg-tool": "deltaglider_proxy/0.1.0",
        "dg-original-name": name,
        "dg-file-sha256": sha256(data),
        "dg-file-size": str(len(data)),
        "dg-md5": md5(data),
        "dg-created-at": CREATED,
        "dg-note": note,
        **extra,
    }


def xdelta(tmp_path: Path, reference: bytes, target: bytes) -> bytes:
    (tmp_path / "ref").write_bytes(reference)
    (tmp_path / "target").write_bytes(target)
    out = tmp_path / "out.delta"
    subprocess.run(
        ["xdelta3", "-e", "-9", "-s", str(tmp_path / "ref"), str(tmp_path / "target"), str(out)], check=True
    )
    return out.read_bytes()


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    response = excinfo.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"].get("Message", ""),
    )


def raw_names(raw: Any, bucket: str, **kwargs: Any) -> list[str]:
    """Every stored name through ListObjectsV2 pages (objects and common prefixes, in order)."""
    names: list[str] = []
    token: str | None = None
    while True:
        extra = {"ContinuationToken": token} if token else {}
        page = raw.list_objects_v2(Bucket=bucket, **kwargs, **extra)
        entries = [o["Key"] for o in page.get("Contents", [])] + [
            p["Prefix"] for p in page.get("CommonPrefixes", [])
        ]
        assert page["KeyCount"] == len(entries)
        names.extend(sorted(entries, key=lambda n: n.encode()))
        if not page["IsTruncated"]:
            return names
        token = page["NextContinuationToken"]


# ---------------------------------------------------------------------------------------------
# Writing the layout raw, reading it logically (what a chained proxy does)
# ---------------------------------------------------------------------------------------------


def test_raw_layout_is_reconstructed_by_the_engine(raw: Any, plain: Any, bkt: str, tmp_path: Path) -> None:
    reference = os.urandom(300_000)
    target = bytearray(reference)
    target[1000:1100] = os.urandom(100)
    target = bytes(target) + b"tail"
    delta = xdelta(tmp_path, reference, target)
    notes = b"release notes\n" * 50
    ref_meta = record("__reference__", reference, "reference", **{"dg-source-name": "rel/app-1.zip"})
    delta_meta = record(
        "app.zip",
        target,
        "delta",
        **{
            "dg-ref-path": "reference.bin",
            "dg-ref-key": "rel/reference.bin",
            "dg-ref-sha256": sha256(reference),
            "dg-delta-size": str(len(delta)),
            "dg-delta-cmd": "xdelta3 -e -9 -s reference.bin app.zip app.zip.delta",
        },
    )
    notes_meta = record(
        "notes.txt", notes, "passthrough", **{"content-type": "text/plain", "user-build": "42"}
    )
    put = raw.put_object(Bucket=bkt, Key="rel/reference.bin", Body=reference, Metadata=ref_meta)
    assert put["ETag"] == f'"{md5(reference)}"'
    put = raw.put_object(Bucket=bkt, Key="rel/app.zip.delta", Body=delta, Metadata=delta_meta)
    assert put["ETag"] == f'"{md5(delta)}"'  # the stored bytes, not the object they stand for
    raw.put_object(Bucket=bkt, Key="rel/notes.txt", Body=notes, Metadata=notes_meta)

    # The inner proxy's own engine serves the logical objects from that layout.
    assert plain.get_object(Bucket=bkt, Key="rel/app.zip")["Body"].read() == target
    head = plain.head_object(Bucket=bkt, Key="rel/app.zip")
    assert head["ContentLength"] == len(target) and head["ETag"] == f'"{md5(target)}"'
    got = plain.get_object(Bucket=bkt, Key="rel/notes.txt")
    assert got["Body"].read() == notes
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"build": "42"}
    listed = plain.list_objects_v2(Bucket=bkt, Prefix="rel/")["Contents"]
    assert [o["Key"] for o in listed] == ["rel/app.zip", "rel/notes.txt"]

    # And the raw view gives back exactly what was stored, records included.
    for key, data, meta in (
        ("rel/reference.bin", reference, ref_meta),
        ("rel/app.zip.delta", delta, delta_meta),
        ("rel/notes.txt", notes, notes_meta),
    ):
        got = raw.get_object(Bucket=bkt, Key=key)
        assert got["Body"].read() == data
        assert got["ContentLength"] == len(data)
        assert got["ContentType"] == "application/octet-stream"
        assert got["Metadata"] == meta
        head = raw.head_object(Bucket=bkt, Key=key)
        assert head["ContentLength"] == len(data) and head["Metadata"] == meta
        assert head["ETag"] == got["ETag"] and head["LastModified"] == got["LastModified"]
    ranged = raw.get_object(Bucket=bkt, Key="rel/app.zip.delta", Range="bytes=2-9")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 2-9/{len(delta)}"
    assert ranged["Body"].read() == delta[2:10]
    with pytest.raises(ClientError) as excinfo:
        raw.get_object(Bucket=bkt, Key="rel/app.zip.delta", Range=f"bytes={len(delta)}-")
    assert error_of(excinfo)[:2] == (416, "InvalidRange")
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=bkt, Prefix="rel/")["Contents"]] == [
        "rel/app.zip.delta",
        "rel/notes.txt",
        "rel/reference.bin",
    ]

    # Replacing the reference raw is seen by the engine (no stale cached copy): the delta no
    # longer matches it, so the logical GET fails its integrity check instead of lying.
    other = os.urandom(300_000)
    raw.put_object(
        Bucket=bkt, Key="rel/reference.bin", Body=other, Metadata=record("__reference__", other, "reference")
    )
    with pytest.raises(ClientError) as excinfo:
        plain.get_object(Bucket=bkt, Key="rel/app.zip")
    assert error_of(excinfo)[:2] == (500, "InternalError")

    # Raw deletes remove exactly the named stored object.
    raw.delete_object(Bucket=bkt, Key="rel/app.zip.delta")
    with pytest.raises(ClientError) as excinfo:
        plain.head_object(Bucket=bkt, Key="rel/app.zip")
    assert error_of(excinfo)[0] == 404
    result = raw.delete_objects(
        Bucket=bkt, Delete={"Objects": [{"Key": "rel/reference.bin"}, {"Key": "rel/missing"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["rel/missing", "rel/reference.bin"]
    assert raw_names(raw, bkt) == ["rel/notes.txt"]


def test_raw_view_of_what_the_engine_stored(raw: Any, plain: Any, bkt: str) -> None:
    first = os.urandom(200_000)
    plain.put_object(Bucket=bkt, Key="v/äpp-1.zip", Body=first, Metadata={"build": "7"})
    assert raw_names(raw, bkt, Prefix="v/") == ["v/reference.bin", "v/äpp-1.zip.delta"]
    assert raw.get_object(Bucket=bkt, Key="v/reference.bin")["Body"].read() == first
    meta = raw.head_object(Bucket=bkt, Key="v/reference.bin")["Metadata"]
    assert meta["dg-note"] == "reference" and meta["dg-file-sha256"] == sha256(first)
    # Non-ASCII values come back as RFC 2047 encoded words, as S3 returns them.
    assert meta["dg-source-name"].startswith("=?UTF-8?")
    assert str(make_header(decode_header(meta["dg-source-name"]))) == "v/äpp-1.zip"
    delta_meta = raw.head_object(Bucket=bkt, Key="v/äpp-1.zip.delta")["Metadata"]
    assert delta_meta["dg-ref-key"] == "v/reference.bin" and delta_meta["dg-ref-path"] == "reference.bin"
    assert delta_meta["dg-note"] == "delta" and delta_meta["user-build"] == "7"
    # Written back as read (what a chained proxy's re-PUT does), the object is unchanged.
    stored = raw.get_object(Bucket=bkt, Key="v/äpp-1.zip.delta")["Body"].read()
    raw.put_object(Bucket=bkt, Key="v/äpp-1.zip.delta", Body=stored, Metadata=delta_meta)
    assert raw.head_object(Bucket=bkt, Key="v/äpp-1.zip.delta")["Metadata"] == delta_meta
    assert plain.get_object(Bucket=bkt, Key="v/äpp-1.zip")["Body"].read() == first


def test_metadata_comes_back_exactly_as_written(raw: Any, plain: Any, bkt: str) -> None:
    """S3 keeps user metadata verbatim; so does layout mode, also for fields the record has no
    place for, older spellings and values its own serialisation would write differently."""
    data = b"patch bytes"
    cli_style = {
        "dg-tool": "deltaglider/6.1.2",
        "dg-original-name": "app.zip",
        "dg-file-sha256": sha256(b"app"),
        "dg-file-size": "3",
        "dg-created-at": "2025-01-01T00:00:00Z",
        "dg-ref-key": "cli/reference.bin",
        "dg-ref-sha256": sha256(b"ref"),
        "dg-delta-size": str(len(data)),
        "dg-delta-cmd": "xdelta3 -e -f -9 -s base target out",
        "dg-note": "zero-diff (reference identical)",
    }
    raw.put_object(Bucket=bkt, Key="cli/app.zip.delta", Body=data, Metadata=cli_style)
    assert raw.head_object(Bucket=bkt, Key="cli/app.zip.delta")["Metadata"] == cli_style
    direct = record("notes.txt", data, "passthrough", **{"dg-compression": "none", "user-k": "v", "odd": "x"})
    raw.put_object(Bucket=bkt, Key="cli/notes.txt", Body=data, Metadata=direct)
    assert raw.head_object(Bucket=bkt, Key="cli/notes.txt")["Metadata"] == direct
    # The logical view shows the client's metadata only.
    assert plain.head_object(Bucket=bkt, Key="cli/notes.txt")["Metadata"] == {"k": "v"}
    # A key ending in "/" that holds data has an empty filename in its record.
    slash = record("", b"folder data", "passthrough")
    raw.put_object(Bucket=bkt, Key="zz/", Body=b"folder data", Metadata=slash)
    assert raw.head_object(Bucket=bkt, Key="zz/")["Metadata"] == slash
    assert plain.get_object(Bucket=bkt, Key="zz/")["Body"].read() == b"folder data"
    # Copies keep the source's metadata as it is.
    raw.copy_object(
        Bucket=bkt, Key="cli2/app.zip.delta", CopySource={"Bucket": bkt, "Key": "cli/app.zip.delta"}
    )
    assert raw.head_object(Bucket=bkt, Key="cli2/app.zip.delta")["Metadata"] == cli_style


def test_delta_names_of_the_longest_keys(raw: Any, bkt: str) -> None:
    longest = "k" * 1024 + ".delta"  # the delta of a 1024-byte user key
    with pytest.raises(ClientError) as excinfo:
        raw.head_object(Bucket=bkt, Key=longest)  # what a chained proxy asks before any write
    assert error_of(excinfo)[0] == 404
    meta = record("k" * 1024, b"x", "delta", **{"dg-ref-sha256": "0" * 64, "dg-delta-cmd": "xdelta3"})
    raw.put_object(Bucket=bkt, Key=longest, Body=b"patch", Metadata=meta)
    assert raw.get_object(Bucket=bkt, Key=longest)["Body"].read() == b"patch"
    with pytest.raises(ClientError) as excinfo:
        raw.put_object(Bucket=bkt, Key="k" + longest, Body=b"patch", Metadata=meta)
    assert error_of(excinfo)[:2] == (400, "KeyTooLongError")


def test_missing_object_is_404(raw: Any, bkt: str) -> None:
    for call in (raw.get_object, raw.head_object):
        with pytest.raises(ClientError) as excinfo:
            call(Bucket=bkt, Key="nothing/reference.bin")
        assert error_of(excinfo)[0] == 404
    with pytest.raises(ClientError) as excinfo:
        raw.get_object(Bucket=bkt, Key="nothing/reference.bin")
    assert error_of(excinfo)[1] == "NoSuchKey"


# ---------------------------------------------------------------------------------------------
# Listing in S3's byte order, with pagination
# ---------------------------------------------------------------------------------------------

TRICKY = ["a.zip-1", "a.zip.delta", "a.zip0", "a/", "a/b", "reference.bin", "a.zip", "b/c/reference.bin"]


def _fill_tricky(raw: Any, bucket: str) -> dict[str, bytes]:
    stored: dict[str, bytes] = {}
    for name in TRICKY:
        if name == "a/":
            raw.put_object(Bucket=bucket, Key=name, Body=b"")  # a directory marker needs no record
            stored[name] = b""
            continue
        data = name.encode() * 3
        extra = {"dg-ref-sha256": "0" * 64, "dg-ref-path": "reference.bin"} if name.endswith(".delta") else {}
        note = "delta" if extra else ("reference" if name.endswith("reference.bin") else "passthrough")
        raw.put_object(Bucket=bucket, Key=name, Body=data, Metadata=record("x", data, note, **extra))
        stored[name] = data
    return stored


def test_listing_order_and_pagination(raw: Any, bkt: str) -> None:
    stored = _fill_tricky(raw, bkt)
    physical = sorted(TRICKY, key=lambda n: n.encode())
    assert physical == [
        "a.zip",
        "a.zip-1",
        "a.zip.delta",
        "a.zip0",
        "a/",
        "a/b",
        "b/c/reference.bin",
        "reference.bin",
    ]
    full = raw.list_objects_v2(Bucket=bkt)
    assert [o["Key"] for o in full["Contents"]] == physical
    sizes = {o["Key"]: o["Size"] for o in full["Contents"]}
    assert sizes == {name: len(data) for name, data in stored.items()}
    for entry in full["Contents"]:
        assert entry["ETag"] == raw.head_object(Bucket=bkt, Key=entry["Key"])["ETag"]
    for max_keys in (1, 2, 3):
        assert raw_names(raw, bkt, MaxKeys=max_keys) == physical
    page = raw.list_objects_v2(Bucket=bkt, MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["a.zip", "a.zip-1"] and page["IsTruncated"]
    page = raw.list_objects_v2(Bucket=bkt, MaxKeys=2, ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in page["Contents"]] == ["a.zip.delta", "a.zip0"]
    after = raw.list_objects_v2(Bucket=bkt, StartAfter="a.zip-1")
    assert [o["Key"] for o in after["Contents"]] == physical[2:]
    # Delimiter: common prefixes take their place in byte order and count towards MaxKeys.
    assert raw_names(raw, bkt, Delimiter="/", MaxKeys=1) == [
        "a.zip",
        "a.zip-1",
        "a.zip.delta",
        "a.zip0",
        "a/",
        "b/",
        "reference.bin",
    ]
    assert raw_names(raw, bkt, Delimiter="/", Prefix="b/") == ["b/c/"]
    assert raw_names(raw, bkt, Delimiter="-") == ["a.zip", "a.zip-", *physical[2:]]
    assert raw_names(raw, bkt, Prefix="a.zip") == physical[:4]
    # ListObjects v1 pages by Marker the same way.
    v1: list[str] = []
    marker = ""
    while True:
        page = raw.list_objects(Bucket=bkt, MaxKeys=2, Marker=marker)
        v1.extend(o["Key"] for o in page["Contents"])
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert v1 == physical
    encoded = raw.list_objects_v2(Bucket=bkt, EncodingType="url", Prefix="a/")
    assert [o["Key"] for o in encoded["Contents"]] == ["a/", "a/b"]


def test_directory_marker(raw: Any, bkt: str) -> None:
    raw.put_object(Bucket=bkt, Key="dir/", Body=b"")
    head = raw.head_object(Bucket=bkt, Key="dir/")
    assert head["ContentLength"] == 0 and head["ContentType"] == "application/x-directory"
    assert head["Metadata"] == {}
    with pytest.raises(ClientError) as excinfo:
        raw.put_object(Bucket=bkt, Key="dir2/", Body=b"not empty")
    assert error_of(excinfo)[:2] == (400, "InvalidArgument")


# ---------------------------------------------------------------------------------------------
# Writes: create-only, the record requirement, multipart, quotas
# ---------------------------------------------------------------------------------------------


def test_if_none_match_star_is_create_only(raw: Any, bkt: str) -> None:
    data = os.urandom(1000)
    meta = record("__reference__", data, "reference")
    raw.put_object(Bucket=bkt, Key="p/reference.bin", Body=data, Metadata=meta, IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        raw.put_object(Bucket=bkt, Key="p/reference.bin", Body=b"other", Metadata=meta, IfNoneMatch="*")
    assert error_of(excinfo)[:2] == (412, "PreconditionFailed")
    assert raw.get_object(Bucket=bkt, Key="p/reference.bin")["Body"].read() == data


def test_raw_put_without_a_record_is_refused(inner: ProxyServer, raw: Any, bkt: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        raw.put_object(Bucket=bkt, Key="x/reference.bin", Body=b"data", Metadata={"foo": "bar"})
    assert error_of(excinfo) == (400, "InvalidArgument", "layout writes need a DeltaGlider metadata record")
    body = excinfo.value.response["Error"]
    assert body["Code"] == "InvalidArgument"  # parsed from the XML error body
    with pytest.raises(ClientError) as excinfo:
        raw.create_multipart_upload(Bucket=bkt, Key="x/big.delta")
    assert error_of(excinfo)[:2] == (400, "InvalidArgument")
    assert "Contents" not in raw.list_objects_v2(Bucket=bkt)


def test_raw_put_error_is_an_xml_document(inner: ProxyServer, bkt: str) -> None:
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.support.server import ACCESS_KEY, SECRET_KEY

    url = f"{inner.endpoint}/{bkt}/x/reference.bin"
    request = AWSRequest(
        method="PUT",
        url=url,
        data=b"data",
        headers={"x-deltaglider-layout": "raw", "x-amz-content-sha256": sha256(b"data")},
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    prepared = urllib.request.Request(url, data=b"data", method="PUT", headers=dict(request.headers))
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(prepared, timeout=10)
    assert excinfo.value.code == 400
    assert excinfo.value.headers["content-type"] == "application/xml"
    document = excinfo.value.read().decode()
    assert document.startswith("<?xml")
    assert "<Code>InvalidArgument</Code>" in document
    assert "<Message>layout writes need a DeltaGlider metadata record</Message>" in document


def test_unknown_layout_header_value_is_refused(inner: ProxyServer, bkt: str) -> None:
    odd = _with_layout_header(make_client(inner.endpoint), "cooked")
    with pytest.raises(ClientError) as excinfo:
        odd.put_object(Bucket=bkt, Key="k.txt", Body=b"x")
    assert error_of(excinfo)[:2] == (400, "InvalidArgument")


def test_raw_multipart_upload(raw: Any, plain: Any, bkt: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(2 * MIB)]
    whole = b"".join(parts)
    meta = record("__reference__", whole, "reference", **{"dg-source-name": "big/v1.zip"})
    upload = raw.create_multipart_upload(Bucket=bkt, Key="big/reference.bin", Metadata=meta)
    etags = [
        raw.upload_part(
            Bucket=bkt, Key="big/reference.bin", UploadId=upload["UploadId"], PartNumber=n, Body=p
        )["ETag"]
        for n, p in enumerate(parts, start=1)
    ]
    listed = raw.list_parts(Bucket=bkt, Key="big/reference.bin", UploadId=upload["UploadId"])
    assert [p["Size"] for p in listed["Parts"]] == [len(p) for p in parts]
    done = raw.complete_multipart_upload(
        Bucket=bkt,
        Key="big/reference.bin",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    assert done["ETag"] == f'"{hashlib.md5(joined).hexdigest()}-3"'
    got = raw.get_object(Bucket=bkt, Key="big/reference.bin")
    assert got["ContentLength"] == len(whole) and got["Metadata"] == meta
    assert hashlib.sha256(got["Body"].read()).hexdigest() == sha256(whole)
    # Not a user object: the logical view hides the reference.
    assert "Contents" not in plain.list_objects_v2(Bucket=bkt, Prefix="big/")


def test_a_raw_upload_completes_only_in_layout_mode(raw: Any, plain: Any, bkt: str) -> None:
    data = b"abc"
    upload = raw.create_multipart_upload(
        Bucket=bkt, Key="m/x.txt", Metadata=record("x.txt", data, "passthrough")
    )
    etag = raw.upload_part(Bucket=bkt, Key="m/x.txt", UploadId=upload["UploadId"], PartNumber=1, Body=data)[
        "ETag"
    ]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    with pytest.raises(ClientError) as excinfo:
        plain.complete_multipart_upload(
            Bucket=bkt, Key="m/x.txt", UploadId=upload["UploadId"], MultipartUpload=parts
        )
    assert error_of(excinfo)[:2] == (400, "InvalidRequest")
    raw.complete_multipart_upload(
        Bucket=bkt, Key="m/x.txt", UploadId=upload["UploadId"], MultipartUpload=parts
    )
    assert plain.get_object(Bucket=bkt, Key="m/x.txt")["Body"].read() == data


def test_quota_applies_to_raw_writes(raw: Any, plain: Any) -> None:
    plain.create_bucket(Bucket=QUOTA_BUCKET)
    data = os.urandom(2 * MIB)
    with pytest.raises(ClientError) as excinfo:
        raw.put_object(
            Bucket=QUOTA_BUCKET, Key="q/reference.bin", Body=data, Metadata=record("r", data, "reference")
        )
    status, code, message = error_of(excinfo)
    assert (status, code) == (403, "AccessDenied") and message.startswith("Bucket quota exceeded")


def test_raw_copies(raw: Any, bkt: str) -> None:
    data = os.urandom(7 * MIB)
    meta = record("__reference__", data, "reference", **{"dg-source-name": "c/v1.zip"})
    raw.put_object(Bucket=bkt, Key="c/reference.bin", Body=data, Metadata=meta)
    etag = raw.head_object(Bucket=bkt, Key="c/reference.bin")["ETag"]
    source = {"Bucket": bkt, "Key": "c/reference.bin"}
    copied = raw.copy_object(Bucket=bkt, Key="d/reference.bin", CopySource=source, CopySourceIfMatch=etag)
    assert copied["CopyObjectResult"]["ETag"] == f'"{md5(data)}"'
    got = raw.get_object(Bucket=bkt, Key="d/reference.bin")
    assert got["Metadata"] == meta and got["Body"].read() == data
    other = record("__reference__", data, "reference", **{"dg-source-name": "d/v9.zip"})
    raw.copy_object(
        Bucket=bkt, Key="e/reference.bin", CopySource=source, MetadataDirective="REPLACE", Metadata=other
    )
    assert raw.head_object(Bucket=bkt, Key="e/reference.bin")["Metadata"] == other
    with pytest.raises(ClientError) as excinfo:
        raw.copy_object(Bucket=bkt, Key="f/reference.bin", CopySource=source, CopySourceIfMatch='"nope"')
    assert error_of(excinfo)[:2] == (412, "PreconditionFailed")
    # UploadPartCopy: the way an S3 backend copies objects above 5 GiB.
    upload = raw.create_multipart_upload(Bucket=bkt, Key="g/reference.bin", Metadata=meta)
    parts = []
    for number, (first, last) in enumerate([(0, 5 * MIB - 1), (5 * MIB, len(data) - 1)], start=1):
        part = raw.upload_part_copy(
            Bucket=bkt,
            Key="g/reference.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            CopySource=source,
            CopySourceRange=f"bytes={first}-{last}",
            CopySourceIfMatch=etag,
        )
        parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
    raw.complete_multipart_upload(
        Bucket=bkt, Key="g/reference.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert raw.get_object(Bucket=bkt, Key="g/reference.bin")["Body"].read() == data


# ---------------------------------------------------------------------------------------------
# Without the header, and with the setting off, nothing changes
# ---------------------------------------------------------------------------------------------


def test_reserved_names_stay_reserved_without_the_header(plain: Any, bkt: str) -> None:
    for key in ("x/reference.bin", "x/a.zip.delta", "reference.bin"):
        with pytest.raises(ClientError) as excinfo:
            plain.put_object(Bucket=bkt, Key=key, Body=b"data")
        assert error_of(excinfo)[:2] == (400, "InvalidArgument")


def test_header_is_ignored_when_the_setting_is_off(tmp_path: Path) -> None:
    server = ProxyServer(data_dir=tmp_path / "data").start()
    try:
        client = _with_layout_header(make_client(server.endpoint))
        client.create_bucket(Bucket="off")
        with pytest.raises(ClientError) as excinfo:
            client.put_object(Bucket="off", Key="x/reference.bin", Body=b"data", Metadata={"dg-tool": "t"})
        assert error_of(excinfo)[:2] == (400, "InvalidArgument")
        # A logical write: no record needed, and the dg- namespace is not the client's.
        client.put_object(Bucket="off", Key="x/a.txt", Body=b"data", Metadata={"dg-note": "delta", "k": "v"})
        head = client.head_object(Bucket="off", Key="x/a.txt")
        assert head["Metadata"] == {"k": "v"} and head["ContentLength"] == 4
        assert [o["Key"] for o in client.list_objects_v2(Bucket="off")["Contents"]] == ["x/a.txt"]
    finally:
        server.stop()
