"""The delta engine through real HTTP: versions stored as deltas against one reference, returned
byte-identical, with the on-disk layout and metadata of storage.md §1."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_client
from tests.support.backends import BackendUnderTest, FilesystemLayout, S3Layout, StoredLayout, started_proxy
from tests.support.server import ProxyServer

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def dproxy(backend: BackendUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    root = tmp_path_factory.mktemp("delta")
    config = root / "config.yaml"
    config.write_text("storage:\n  buckets:\n    plain:\n      compression: false\n")
    server = started_proxy(
        backend,
        root,
        env={"DGP_DEBUG_HEADERS": "true", "DGP_DELTA_ENCODING": "inline"},
        args=["--config", str(config)],
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ds3(dproxy: ProxyServer) -> Any:
    return make_client(dproxy.endpoint)


@pytest.fixture(scope="module")
def stored(backend: BackendUnderTest, dproxy: ProxyServer) -> StoredLayout:
    return backend.layout(dproxy)


@pytest.fixture
def dbucket(ds3: Any, request: pytest.FixtureRequest) -> str:
    name = "d-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    ds3.create_bucket(Bucket=name)
    return name


def edited(base: bytes, rng: random.Random, edits: int = 5) -> bytes:
    """A new 'version': a few replaced, inserted and deleted regions, so content shifts."""
    data = bytearray(base)
    for _ in range(edits):
        at = rng.randrange(0, max(1, len(data)))
        kind = rng.choice(("replace", "insert", "delete"))
        size = rng.randrange(1, 2048)
        if kind == "replace":
            data[at : at + size] = rng.randbytes(min(size, len(data) - at))
        elif kind == "insert":
            data[at:at] = rng.randbytes(size)
        else:
            del data[at : at + size]
    return bytes(data)


def put_get(s3: Any, bucket: str, key: str, body: bytes) -> tuple[str, bytes]:
    stored = s3.put_object(Bucket=bucket, Key=key, Body=body)
    kind = stored["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"]
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return kind, got


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_versions_become_deltas_against_one_reference(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    rng = random.Random(1)
    base = rng.randbytes(2 * MIB)
    versions = [base]
    for _ in range(5):
        versions.append(edited(versions[-1], rng))
    kinds = []
    for number, body in enumerate(versions):
        kind, got = put_get(ds3, dbucket, f"rel/app-{number}.zip", body)
        assert sha(got) == sha(body)
        kinds.append(kind)
    assert kinds == ["delta"] * len(versions)
    names = stored.names(dbucket, "rel")
    assert names == sorted(["reference.bin", *(f"app-{n}.zip.delta" for n in range(len(versions)))])
    assert stored.stored_bytes(dbucket, "rel") < len(base) + 200_000  # one full copy plus small deltas
    listing = ds3.list_objects_v2(Bucket=dbucket, Prefix="rel/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listing] == [
        (f"rel/app-{n}.zip", len(v)) for n, v in enumerate(versions)
    ]
    head = ds3.head_object(Bucket=dbucket, Key="rel/app-3.zip")
    assert head["ContentLength"] == len(versions[3])
    assert head["ETag"] == '"' + hashlib.md5(versions[3]).hexdigest() + '"'
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    size=st.sampled_from([0, 1, 2, 100, 4096, 70_000, 600_000]),
    seed=st.integers(0, 2**32 - 1),
    edits=st.integers(0, 8),
)
def test_round_trip_property(ds3: Any, dbucket: str, size: int, seed: int, edits: int) -> None:
    rng = random.Random(seed)
    base = rng.randbytes(size)
    version = edited(base, rng, edits) if size else b""
    prefix = f"p{seed}-{size}-{edits}"
    for name, body in (("a.tar", base), ("b.tar", version)):
        _, got = put_get(ds3, dbucket, f"{prefix}/{name}", body)
        assert sha(got) == sha(body)
    ranged = (
        ds3.get_object(Bucket=dbucket, Key=f"{prefix}/b.tar", Range="bytes=-10")["Body"].read()
        if version
        else b""
    )
    assert ranged == version[-10:]


def test_large_object_round_trip(ds3: Any, dbucket: str) -> None:
    rng = random.Random(7)
    chunk = rng.randbytes(MIB)
    base = b"".join(chunk[i:] + chunk[:i] for i in range(0, 70 * 4096, 4096))  # > 64 MiB, shifting
    version = base[: 30 * MIB] + b"inserted" * 1000 + base[30 * MIB :]
    for name, body in (("big/v1.tar", base), ("big/v2.tar", version)):
        kind, got = put_get(ds3, dbucket, name, body)
        assert kind == "delta" and sha(got) == sha(body)
    middle = ds3.get_object(Bucket=dbucket, Key="big/v2.tar", Range=f"bytes={30 * MIB}-{30 * MIB + 7999}")
    assert middle["Body"].read() == b"inserted" * 1000


def test_concurrent_puts_into_an_empty_deltaspace(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    rng = random.Random(16)
    base = rng.randbytes(MIB)
    versions = [edited(base, rng) for _ in range(16)]

    def put(number: int) -> None:
        ds3.put_object(Bucket=dbucket, Key=f"race/v{number}.zip", Body=versions[number])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(16)))
    for number, body in enumerate(versions):
        assert sha(ds3.get_object(Bucket=dbucket, Key=f"race/v{number}.zip")["Body"].read()) == sha(body)
    names = stored.names(dbucket, "race")
    assert names.count("reference.bin") == 1
    assert len([n for n in names if n.endswith(".delta")]) == 16


@pytest.mark.parametrize("victim", ["delta", "reference"])
def test_corruption_is_never_served(
    dproxy: ProxyServer, stored: StoredLayout, ds3: Any, dbucket: str, victim: str
) -> None:
    rng = random.Random(3)
    base = rng.randbytes(MIB)
    ds3.put_object(Bucket=dbucket, Key="c/one.zip", Body=base)
    version = edited(base, rng)
    ds3.put_object(Bucket=dbucket, Key="c/two.zip", Body=version)
    stored.corrupt(dbucket, "c/two.zip.delta" if victim == "delta" else "c/reference.bin")
    if victim == "reference":
        # The cache still holds the verified copy it took when the reference was written: the
        # object is still served, correctly. A restart empties the cache.
        assert sha(ds3.get_object(Bucket=dbucket, Key="c/two.zip")["Body"].read()) == sha(version)
        dproxy.stop()
        dproxy.start()
    with pytest.raises(ClientError) as exc:
        ds3.get_object(Bucket=dbucket, Key="c/two.zip")
    assert exc.value.response["Error"]["Code"] == "InternalError"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "Internal server error" in exc.value.response["Error"]["Message"]
    assert "failed verification" in dproxy.log()


def test_metadata_records_field_by_field(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    body = random.Random(5).randbytes(300_000)
    ds3.put_object(
        Bucket=dbucket, Key="m/rel.tar", Body=body, ContentType="application/x-tar", Metadata={"build": "42"}
    )
    if isinstance(stored, S3Layout):
        check_s3_metadata(stored, dbucket, body)
        return
    assert isinstance(stored, FilesystemLayout)
    ref = stored.record(dbucket, "m/reference.bin")
    assert list(ref) == [
        "tool",
        "original_name",
        "file_sha256",
        "file_size",
        "md5",
        "created_at",
        "content_type",
        "note",
        "source_name",
    ]
    assert ref["tool"].startswith("deltaglider_proxy/")
    assert ref["original_name"] == "__reference__"
    assert ref["note"] == "reference" and ref["source_name"] == "m/rel.tar"
    assert ref["file_sha256"] == sha(body) and ref["file_size"] == len(body)
    assert ref["md5"] == hashlib.md5(body).hexdigest()
    assert ref["created_at"].endswith("Z")
    delta = stored.record(dbucket, "m/rel.tar.delta")
    assert list(delta) == [
        "tool",
        "original_name",
        "file_sha256",
        "file_size",
        "md5",
        "created_at",
        "content_type",
        "user_metadata",
        "note",
        "ref_path",
        "ref_sha256",
        "delta_size",
        "delta_cmd",
    ]
    assert delta["original_name"] == "rel.tar"
    assert delta["note"] == "delta" and delta["ref_path"] == "reference.bin"
    assert delta["ref_sha256"] == ref["file_sha256"]
    assert delta["delta_size"] == len(stored.read(dbucket, "m/rel.tar.delta"))
    assert delta["delta_cmd"] == "xdelta3 -e -9 -s reference.bin rel.tar rel.tar.delta"
    # boto3 sends a CRC32 by default; it is kept (under a dg- name clients never see) to answer
    # x-amz-checksum-mode.
    assert delta["user_metadata"] == {
        "build": "42",
        "dg-checksum-crc32": delta["user_metadata"]["dg-checksum-crc32"],
    }
    assert delta["content_type"] == "application/x-tar"
    # The stored delta is a standard VCDIFF stream: magic bytes 0xD6 0xC3 0xC4.
    assert stored.read(dbucket, "m/rel.tar.delta")[:3] == b"\xd6\xc3\xc4"


def test_dissimilar_version_falls_back_to_passthrough(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    rng = random.Random(9)
    ds3.put_object(Bucket=dbucket, Key="r/first.zip", Body=rng.randbytes(MIB))
    unrelated = rng.randbytes(MIB)
    kind, got = put_get(ds3, dbucket, "r/other.zip", unrelated)
    assert kind == "passthrough" and got == unrelated
    assert stored.names(dbucket, "r") == ["first.zip.delta", "other.zip", "reference.bin"]


def test_tiny_first_object_leaves_no_reference(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    kind, got = put_get(ds3, dbucket, "t/one.zip", b"x")
    assert kind == "passthrough" and got == b"x"
    assert stored.names(dbucket, "t") == ["one.zip"]


def test_unlisted_types_by_content_and_similarity(ds3: Any, dbucket: str) -> None:
    rng = random.Random(11)
    members = {f"pkg/mod{i}.so": rng.randbytes(40_000) for i in range(20)}

    def wheel(changed: int) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for index, (name, data) in enumerate(members.items()):
                archive.writestr(name, data if index != changed else rng.randbytes(40_000))
        return out.getvalue()

    # A .whl is not on the extension list, but its bytes say zip: it seeds the reference.
    kind, got = put_get(ds3, dbucket, "w/pkg-1.0.whl", wheel(-1))
    assert kind == "delta"
    kind, got = put_get(ds3, dbucket, "w/pkg-1.1.whl", second := wheel(3))
    assert kind == "delta" and got == second
    # Not an archive and not on the list, but similar to the reference: a delta too.
    blob = wheel(-1)[1000:] + b"tail"
    kind, got = put_get(ds3, dbucket, "w/blob.bin", blob)
    assert kind == "delta" and got == blob
    # Neither similar nor an archive: plain passthrough, no codec run.
    kind, _ = put_get(ds3, dbucket, "other/notes.txt", b"hello " * 1000)
    assert kind == "passthrough"


def test_delete_last_delta_removes_reference(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    rng = random.Random(12)
    base = rng.randbytes(200_000)
    ds3.put_object(Bucket=dbucket, Key="del/a.zip", Body=base)
    ds3.put_object(Bucket=dbucket, Key="del/b.zip", Body=edited(base, rng))
    ds3.delete_object(Bucket=dbucket, Key="del/a.zip")
    assert stored.exists(dbucket, "del/reference.bin")
    assert sha(ds3.get_object(Bucket=dbucket, Key="del/b.zip")["Body"].read()) != ""
    ds3.delete_object(Bucket=dbucket, Key="del/b.zip")
    assert stored.names(dbucket, "del") == []
    assert ds3.list_objects_v2(Bucket=dbucket).get("KeyCount", 0) == 0


def test_overwrite_switches_kind_atomically(stored: StoredLayout, ds3: Any, dbucket: str) -> None:
    rng = random.Random(13)
    base = rng.randbytes(300_000)
    ds3.put_object(Bucket=dbucket, Key="o/x.zip", Body=base)
    ds3.put_object(Bucket=dbucket, Key="o/y.zip", Body=edited(base, rng))
    unrelated = rng.randbytes(300_000)
    kind, got = put_get(ds3, dbucket, "o/y.zip", unrelated)
    assert kind == "passthrough" and got == unrelated
    assert stored.names(dbucket, "o") == ["reference.bin", "x.zip.delta", "y.zip"]
    again = edited(base, rng)
    kind, got = put_get(ds3, dbucket, "o/y.zip", again)
    assert kind == "delta" and got == again
    assert stored.names(dbucket, "o") == [
        "reference.bin",
        "x.zip.delta",
        "y.zip.delta",
    ]


def test_copy_and_multipart_go_through_the_engine(ds3: Any, dbucket: str) -> None:
    rng = random.Random(14)
    base = rng.randbytes(6 * MIB)
    ds3.put_object(Bucket=dbucket, Key="src/a.zip", Body=base)
    version = edited(base, rng)
    ds3.put_object(Bucket=dbucket, Key="src/b.zip", Body=version)
    ds3.copy_object(Bucket=dbucket, Key="dst/b.zip", CopySource={"Bucket": dbucket, "Key": "src/b.zip"})
    got = ds3.get_object(Bucket=dbucket, Key="dst/b.zip")
    assert sha(got["Body"].read()) == sha(version)
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"
    upload = ds3.create_multipart_upload(Bucket=dbucket, Key="src/c.zip")["UploadId"]
    third = edited(base, rng)
    parts = []
    for number, start in enumerate(range(0, len(third), 5 * MIB), start=1):
        etag = ds3.upload_part(
            Bucket=dbucket,
            Key="src/c.zip",
            UploadId=upload,
            PartNumber=number,
            Body=third[start : start + 5 * MIB],
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    ds3.complete_multipart_upload(
        Bucket=dbucket, Key="src/c.zip", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    got = ds3.get_object(Bucket=dbucket, Key="src/c.zip")
    assert sha(got["Body"].read()) == sha(third)
    assert got["ETag"].endswith('-2"')
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-storage-type"] == "delta"


def test_bucket_with_compression_off(stored: StoredLayout, ds3: Any) -> None:
    with contextlib.suppress(ClientError):
        ds3.create_bucket(Bucket="plain")
    base = random.Random(15).randbytes(200_000)
    kind, got = put_get(ds3, "plain", "a/x.zip", base)
    assert kind == "passthrough" and got == base
    assert not stored.exists("plain", "a/reference.bin")


def check_s3_metadata(stored: S3Layout, bucket: str, body: bytes) -> None:
    """The x-amz-meta-dg-* form of storage.md §1.5.2 and §1.6, field by field."""
    ref = stored.metadata(bucket, "m/reference.bin")
    assert ref["dg-tool"].startswith("deltaglider_proxy/")
    assert ref["dg-original-name"] == "__reference__"
    assert ref["dg-note"] == "reference" and ref["dg-source-name"] == "m/rel.tar"
    assert ref["dg-file-sha256"] == sha(body) and ref["dg-file-size"] == str(len(body))
    assert ref["dg-md5"] == hashlib.md5(body).hexdigest()
    assert ref["dg-created-at"].endswith("Z")
    assert not any(k.startswith("dg-ref") for k in ref)
    delta = stored.metadata(bucket, "m/rel.tar.delta")
    assert delta["dg-original-name"] == "rel.tar"
    assert delta["dg-note"] == "delta"
    assert delta["dg-ref-path"] == "reference.bin"
    assert delta["dg-ref-key"] == "m/reference.bin"  # what the deltaglider CLI reads
    assert delta["dg-ref-sha256"] == ref["dg-file-sha256"]
    assert delta["dg-delta-size"] == str(len(stored.read(bucket, "m/rel.tar.delta")))
    assert delta["dg-delta-cmd"] == "xdelta3 -e -9 -s reference.bin rel.tar rel.tar.delta"
    assert delta["content-type"] == "application/x-tar"
    assert delta["user-build"] == "42"
    assert stored.read(bucket, "m/rel.tar.delta")[:3] == b"\xd6\xc3\xc4"
    raw = stored.client.head_object(Bucket=bucket, Key="m/rel.tar.delta")
    assert raw["ContentType"] == "application/octet-stream"
