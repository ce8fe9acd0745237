"""S3Backend against a real S3 server (moto's standalone server, a subprocess on loopback).

Each test runs one asyncio loop (the client belongs to the loop it was started in) and uses its
own bucket. Raw objects are inspected, and out-of-band objects written, with plain boto3.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config

from deltaglider_proxy.storage.base import (
    Backend,
    BackendUnavailable,
    BucketNotEmpty,
    BucketNotFound,
    CommonPrefix,
    InvalidObjectName,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoredObject,
    logical_sort_key,
)
from deltaglider_proxy.storage.metadata import TOOL, FileMetadata
from deltaglider_proxy.storage.s3 import (
    CREDENTIALS_REQUIRED,
    BackendConfigError,
    MetadataTooLarge,
    S3Backend,
)
from deltaglider_proxy.storage.s3_listing import raw_name
from tests.support.s3servers import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, Fault, FaultProxy, MotoServer
from tests.support.server import free_port

T = TypeVar("T")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def raw(moto: MotoServer) -> Any:
    """A plain boto3 client on the same server, for out-of-band writes and raw inspection."""
    return boto3.client(
        "s3",
        endpoint_url=moto.endpoint,
        aws_access_key_id=MOTO_ACCESS_KEY,
        aws_secret_access_key=MOTO_SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def bucket(raw: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:16]}"
    raw.create_bucket(Bucket=name)
    return name


def make_backend(endpoint: str, **options: Any) -> S3Backend:
    settings: dict[str, Any] = {"max_attempts": 1, "connect_timeout": 2.0, "read_timeout": 30.0}
    settings.update(options)
    return S3Backend(endpoint, "us-east-1", True, MOTO_ACCESS_KEY, MOTO_SECRET_KEY, **settings)


def run_with(backend: S3Backend, scenario: Callable[[S3Backend], Awaitable[T]]) -> T:
    async def main() -> T:
        await backend.start()
        try:
            return await scenario(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def record_for(name: str, data: bytes, **changes: Any) -> FileMetadata:
    record = FileMetadata(
        tool=TOOL,
        original_name=name.rsplit("/", 1)[-1],
        file_sha256=hashlib.sha256(data).hexdigest(),
        file_size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        created_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        note="passthrough",
        content_type="text/plain",
    )
    return dataclasses.replace(record, **changes)


def source_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return path


async def read_all(
    backend: S3Backend, bucket: str, name: str, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in backend.read(bucket, name, start, end)])


async def labels(
    backend: S3Backend, bucket: str, prefix: str = "", after: str = "", delimiter: str | None = None
) -> list[str]:
    out = []
    async for entry in backend.list(bucket, prefix, after, delimiter):
        out.append(f"CP:{entry.name}" if isinstance(entry, CommonPrefix) else entry.name)
    return out


def assert_same_record(actual: FileMetadata | None, expected: FileMetadata) -> None:
    assert actual is not None
    for field in dataclasses.fields(FileMetadata):
        assert getattr(actual, field.name) == getattr(expected, field.name), field.name


# ---------------------------------------------------------------------------------------------
# Construction and lifecycle
# ---------------------------------------------------------------------------------------------


def test_implements_the_backend_protocol() -> None:
    backend: Backend = make_backend("http://127.0.0.1:1")  # checked by mypy --strict
    assert backend is not None


@pytest.mark.parametrize(("key", "secret"), [(None, "s"), ("k", None), ("", ""), (None, None)])
def test_static_credentials_are_required(key: str | None, secret: str | None) -> None:
    with pytest.raises(BackendConfigError) as caught:
        S3Backend(None, "us-east-1", True, key, secret)
    assert str(caught.value) == CREDENTIALS_REQUIRED
    assert isinstance(caught.value, StorageError) and isinstance(caught.value, ValueError)


def test_credential_chain_is_an_explicit_opt_in() -> None:
    backend = S3Backend(None, "eu-central-1", False, None, None, use_credential_chain=True)
    assert backend.region == "eu-central-1"


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(BackendConfigError, match="part size"):
        make_backend("http://127.0.0.1:1", part_size=MiB)


def test_calls_before_start_fail_clearly() -> None:
    backend = make_backend("http://127.0.0.1:1")
    with pytest.raises(StorageError, match="not started"):
        asyncio.run(backend.bucket_exists("x"))


def test_start_sends_nothing_and_check_answers(moto: MotoServer) -> None:
    async def scenario(backend: S3Backend) -> None:
        await backend.check()

    run_with(make_backend(moto.endpoint), scenario)


def test_unreachable_endpoint_is_backend_unavailable_quickly(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    source = source_file(tmp_path, b"data")

    async def scenario(backend: S3Backend) -> list[type[BaseException]]:
        failures: list[type[BaseException]] = []
        for call in (
            backend.check(),
            backend.bucket_exists("bkt"),
            backend.head("bkt", "k"),
            backend.list_buckets(),
            backend.write("bkt", "k", source, record_for("k", b"data")),
        ):
            with pytest.raises(BackendUnavailable) as caught:
                await call
            failures.append(type(caught.value))
        return failures

    started = time.monotonic()
    backend = make_backend(dead, connect_timeout=1.0)
    assert run_with(backend, scenario) == [BackendUnavailable] * 5
    # The write alone waits 0.1 + 0.2 + 0.4 s between its four tries.
    assert time.monotonic() - started < 10
    assert source.exists()  # a failed write leaves the source alone


# ---------------------------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------------------------


def test_bucket_lifecycle(moto: MotoServer, tmp_path: Path) -> None:
    name = f"life-{uuid.uuid4().hex[:12]}"
    source = source_file(tmp_path, b"x")

    async def scenario(backend: S3Backend) -> None:
        assert await backend.bucket_exists(name) is False
        assert await backend.create_bucket(name) is True
        assert await backend.create_bucket(name) is False  # us-east-1 would answer 200 again
        assert await backend.bucket_exists(name) is True
        listed = {b.name: b for b in await backend.list_buckets()}
        assert name in listed
        created = listed[name].created
        assert created.tzinfo is not None and abs((datetime.now(UTC) - created).total_seconds()) < 300
        await backend.write(name, "obj", source, record_for("obj", b"x"))
        with pytest.raises(BucketNotEmpty):
            await backend.delete_bucket(name)
        assert await backend.delete(name, "obj") is True
        await backend.delete_bucket(name)
        assert await backend.bucket_exists(name) is False
        assert name not in {b.name for b in await backend.list_buckets()}
        with pytest.raises(BucketNotFound):
            await backend.delete_bucket(name)

    run_with(make_backend(moto.endpoint), scenario)


def test_missing_bucket_errors(moto: MotoServer, tmp_path: Path) -> None:
    missing = f"gone-{uuid.uuid4().hex[:12]}"
    source = source_file(tmp_path, b"x")

    async def scenario(backend: S3Backend) -> None:
        with pytest.raises(BucketNotFound) as caught:
            await backend.head(missing, "k")
        assert str(caught.value) == missing  # the edge uses it as the S3 Resource
        with pytest.raises(BucketNotFound):
            await read_all(backend, missing, "k")
        with pytest.raises(BucketNotFound):
            await backend.write(missing, "k", source, record_for("k", b"x"))
        with pytest.raises(BucketNotFound):
            await labels(backend, missing)
        with pytest.raises(BucketNotFound):
            await backend.usage_bytes(missing)
        with pytest.raises(BucketNotFound):
            await backend.delete(missing, "k")

    run_with(make_backend(moto.endpoint), scenario)


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def test_write_head_read_round_trip_keeps_the_record(
    moto: MotoServer, raw: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    name = "releases/v1.2/app é 1.zip.delta"
    record = record_for(
        name,
        data,
        original_name="app é 1.zip",
        note="delta",
        ref_path="reference.bin",
        ref_sha256="ab" * 32,
        delta_size=len(data),
        delta_cmd="xdelta3 -e -9 -s reference.bin app.zip app.zip.delta",
        multipart_etag='"0123456789abcdef0123456789abcdef-3"',
        content_type="application/zip",
        user_metadata={"owner": "  team  a ", "note": "=?literal?="},
        checksums={"CRC32": "AAAAAA=="},
    )
    source = source_file(tmp_path, data)

    async def scenario(backend: S3Backend) -> tuple[StoredObject, StoredObject | None, bytes]:
        written = await backend.write(bucket, name, source, record)
        return written, await backend.head(bucket, name), await read_all(backend, bucket, name)

    written, head, body = run_with(make_backend(moto.endpoint), scenario)
    assert body == data
    assert source.exists()  # move=False keeps the caller's file
    assert written.name == name and written.size == len(data) and written.record == record
    assert written.etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert head is not None and head.record_loaded
    assert head.size == len(data) and head.etag == written.etag
    assert head.content_type == "application/zip"  # the client's, kept in metadata
    assert head.modified.tzinfo is not None and abs((datetime.now(UTC) - head.modified).total_seconds()) < 300
    assert_same_record(head.record, record)
    stored = raw.head_object(Bucket=bucket, Key=name)
    assert stored["ContentType"] == "application/octet-stream"
    meta = stored["Metadata"]
    assert meta["dg-note"] == "delta" and meta["dg-ref-path"] == "reference.bin"
    assert meta["dg-ref-key"] == "releases/v1.2/reference.bin"  # CLI interop (§1.6)
    assert meta["dg-original-name"].startswith("=?UTF-8?B?")  # non-ASCII travels RFC 2047-encoded
    assert meta["dg-created-at"] == "2024-05-06T07:08:09.123456Z"


def test_open_read_answers_record_and_bytes_with_one_get(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    proxy = FaultProxy(moto.port).start()
    data = os.urandom(300_000)
    record = record_for("o.bin", data, user_metadata={"k": "v"})
    try:

        async def scenario(backend: S3Backend) -> tuple[Any, bytes, Any, bytes, int, int]:
            await backend.write(bucket, "o.bin", source_file(tmp_path, data), record)
            heads, gets = proxy.calls("HEAD"), proxy.calls("GET")
            got, body = await backend.open_read(bucket, "o.bin", 10, 20_010)
            part = b"".join([chunk async for chunk in body])
            body.close()
            unread, unread_body = await backend.open_read(bucket, "o.bin")
            unread_body.close()  # closed without reading a byte: the connection is released
            _, past_end = await backend.open_read(bucket, "o.bin", len(data) + 5)
            tail = b"".join([chunk async for chunk in past_end])
            return got, part, unread, tail, proxy.calls("HEAD") - heads, proxy.calls("GET") - gets

        got, part, unread, tail, heads, gets = run_with(make_backend(proxy.endpoint), scenario)
        assert part == data[10:20_010] and tail == b""
        assert_same_record(got, record)
        assert_same_record(unread, record)
        assert heads == 0 and gets == 3  # the record came with the bytes
        with pytest.raises(ObjectNotFound):
            run_with(make_backend(proxy.endpoint), lambda b: b.open_read(bucket, "absent.bin"))
    finally:
        proxy.stop()


def test_ranges(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    source = source_file(tmp_path, data)

    async def scenario(backend: S3Backend) -> None:
        await backend.write(bucket, "r.bin", source, record_for("r.bin", data))
        for start, end in [
            (0, None),
            (0, 1),
            (5, 10),
            (len(data) - 3, None),
            (100, len(data) + 50),
            (9000, 10240),
        ]:
            got = await read_all(backend, bucket, "r.bin", start, end)
            assert got == data[start:end], (start, end)
        assert await read_all(backend, bucket, "r.bin", len(data)) == b""
        assert await read_all(backend, bucket, "r.bin", len(data) + 10, None) == b""
        assert await read_all(backend, bucket, "r.bin", 7, 7) == b""
        assert await read_all(backend, bucket, "missing", 7, 7) == b""  # empty range: no request
        with pytest.raises(ObjectNotFound) as caught:
            await read_all(backend, bucket, "missing")
        assert str(caught.value) == "missing"
        with pytest.raises(ObjectNotFound):
            await read_all(backend, bucket, "missing", 3, 9)

    run_with(make_backend(moto.endpoint), scenario)


def test_reading_stops_early_without_breaking_the_client(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    source = source_file(tmp_path, data)

    async def scenario(backend: S3Backend) -> None:
        await backend.write(bucket, "big", source, record_for("big", data))
        for _ in range(5):  # more abandoned streams than... anything: connections are released
            stream = backend.read(bucket, "big")
            first = await stream.__anext__()
            assert first == data[: len(first)]
            await stream.aclose()  # type: ignore[attr-defined]
        assert await read_all(backend, bucket, "big") == data

    run_with(make_backend(moto.endpoint, max_pool_connections=2), scenario)


def test_empty_object(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    source = source_file(tmp_path, b"")

    async def scenario(backend: S3Backend) -> None:
        stored = await backend.write(bucket, "empty", source, record_for("empty", b""))
        assert stored.size == 0
        assert await read_all(backend, bucket, "empty") == b""
        assert await read_all(backend, bucket, "empty", 0, 10) == b""
        head = await backend.head(bucket, "empty")
        assert head is not None and head.size == 0 and head.record is not None

    run_with(make_backend(moto.endpoint), scenario)


def test_multipart_upload_above_the_threshold(
    moto: MotoServer, raw: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB + 123)
    record = record_for("big.bin", data)
    source = source_file(tmp_path, data)

    async def scenario(backend: S3Backend) -> tuple[StoredObject, StoredObject | None, bytes]:
        written = await backend.write(bucket, "dir/big.bin", source, record, move=True)
        return (
            written,
            await backend.head(bucket, "dir/big.bin"),
            await read_all(backend, bucket, "dir/big.bin"),
        )

    backend = make_backend(moto.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB)
    written, head, body = run_with(backend, scenario)
    assert body == data
    assert not source.exists()  # move=True hands the file over
    assert written.etag is not None and written.etag.strip('"').endswith("-3")
    assert head is not None and head.size == len(data) and head.etag == written.etag
    assert_same_record(head.record, record)
    assert raw.head_object(Bucket=bucket, Key="dir/big.bin")["ContentType"] == "application/octet-stream"
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_failed_or_cancelled_multipart_upload_is_aborted(
    moto: MotoServer, raw: Any, bucket: str, tmp_path: Path
) -> None:
    proxy = FaultProxy(moto.port).start()
    data = os.urandom(16 * MiB)
    try:

        async def scenario(backend: S3Backend) -> None:
            # A part refused for good: the upload is aborted, the error is the backend's.
            proxy.fail(Fault("PUT", 400, "InvalidArgument", times=1))
            with pytest.raises(StorageError, match="InvalidArgument"):
                await backend.write(bucket, "failed", source_file(tmp_path, data), record_for("f", data))
            # The writer goes away while parts are on the wire.
            proxy.fail(Fault("PUT", 0, stall=1.0, times=100))
            before = proxy.calls("PUT")
            task = asyncio.create_task(
                backend.write(bucket, "cancelled", source_file(tmp_path, data), record_for("c", data))
            )
            for _ in range(500):  # parts are stalled at the server for a second each
                if proxy.calls("PUT") - before >= 2:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run_with(make_backend(proxy.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
        assert proxy.calls("DELETE") >= 2  # an AbortMultipartUpload each (again if one raced a part)
        assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert "Contents" not in raw.list_objects_v2(Bucket=bucket)
    finally:
        proxy.stop()


def test_single_put_at_the_threshold(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(5 * MiB)
    source = source_file(tmp_path, data)

    async def scenario(backend: S3Backend) -> StoredObject:
        return await backend.write(bucket, "exact", source, record_for("exact", data))

    written = run_with(make_backend(moto.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
    assert written.etag == f'"{hashlib.md5(data).hexdigest()}"'  # not a multipart ETag


def test_if_absent_refuses_to_replace(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    first, second = b"first version", os.urandom(11 * MiB)

    async def scenario(backend: S3Backend) -> None:
        record = record_for("reference.bin", first, note="reference", source_name="a/x.zip")
        await backend.write(bucket, "a/reference.bin", source_file(tmp_path, first), record, if_absent=True)
        for data in (b"other bytes", second):  # single PUT, then multipart
            later = source_file(tmp_path, data)
            with pytest.raises(ObjectExists):
                await backend.write(
                    bucket,
                    "a/reference.bin",
                    later,
                    record_for("reference.bin", data),
                    if_absent=True,
                    move=True,
                )
            assert later.exists()  # nothing was taken over
        assert await read_all(backend, bucket, "a/reference.bin") == first
        # The very same write again (a resend whose first answer was lost) is not a conflict.
        await backend.write(bucket, "a/reference.bin", source_file(tmp_path, first), record, if_absent=True)
        # A multipart create-only write to a fresh name works.
        stored = await backend.write(
            bucket,
            "b/reference.bin",
            source_file(tmp_path, second),
            record_for("reference.bin", second),
            if_absent=True,
        )
        assert stored.etag is not None and stored.etag.strip('"').endswith("-3")

    run_with(make_backend(moto.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)


def test_if_absent_without_conditional_write_support(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    proxy = FaultProxy(moto.port).start()
    # An older S3-compatible store: If-None-Match on writes is not implemented.
    proxy.fail(Fault("PUT", 501, "NotImplemented", header="if-none-match"))
    proxy.fail(Fault("POST", 501, "NotImplemented", header="if-none-match"))
    try:

        async def scenario(backend: S3Backend) -> None:
            await backend.write(
                bucket, "ref", source_file(tmp_path, b"one"), record_for("ref", b"one"), if_absent=True
            )
            with pytest.raises(ObjectExists):
                await backend.write(
                    bucket, "ref", source_file(tmp_path, b"two"), record_for("ref", b"two"), if_absent=True
                )
            big = os.urandom(11 * MiB)
            await backend.write(
                bucket, "mp", source_file(tmp_path, big), record_for("mp", big), if_absent=True
            )
            assert await read_all(backend, bucket, "mp") == big
            assert await read_all(backend, bucket, "ref") == b"one"

        run_with(make_backend(proxy.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
        assert proxy.faults[0].times == 1_000_000 - 1  # answered 501 once, then never asked again
        assert proxy.faults[1].times == 1_000_000
    finally:
        proxy.stop()


def test_transient_put_failures_are_retried(
    moto: MotoServer, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultProxy(moto.port).start()
    try:
        data = os.urandom(6 * MiB + 1)  # two parts
        source = source_file(tmp_path, data)

        async def scenario(backend: S3Backend) -> None:
            # Two transient 400s (Hetzner-style), then success: three PUTs in all.
            proxy.fail(Fault("PUT", 400, "BadRequest", times=2))
            await backend.write(bucket, "small", source_file(tmp_path, b"abc"), record_for("small", b"abc"))
            assert proxy.calls("PUT") == 3
            assert await read_all(backend, bucket, "small") == b"abc"
            # A part failing with 503 twice: the part is resent from a fresh handle.
            proxy.fail(Fault("PUT", 503, "SlowDown", times=2))
            await backend.write(bucket, "mp", source, record_for("mp", data))
            assert await read_all(backend, bucket, "mp") == data
            # Permanent: four tries (3 retries) and the backend's answer in the error and log.
            before = proxy.calls("PUT")
            proxy.fail(Fault("PUT", 400, "BadRequest", times=100))
            caplog.clear()
            with (
                caplog.at_level(logging.WARNING, logger="deltaglider_proxy.storage.s3_errors"),
                pytest.raises(StorageError, match="BadRequest") as caught,
            ):
                await backend.write(bucket, "x", source_file(tmp_path, b"x"), record_for("x", b"x"))
            assert type(caught.value) is StorageError
            assert proxy.calls("PUT") - before == 4
            logged = " ".join(r.getMessage() for r in caplog.records)
            assert (
                "PutObject" in logged
                and "status=400" in logged
                and "fault-req-1" in logged
                and bucket in logged
            )
            # A 400 about the request itself is not retried.
            proxy.faults.clear()
            before = proxy.calls("PUT")
            proxy.fail(Fault("PUT", 400, "InvalidArgument", times=100))
            with pytest.raises(StorageError, match="InvalidArgument"):
                await backend.write(bucket, "y", source_file(tmp_path, b"y"), record_for("y", b"y"))
            assert proxy.calls("PUT") - before == 1
            assert await backend.head(bucket, "x") is None

        run_with(make_backend(proxy.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
    finally:
        proxy.stop()


def test_throttling_and_server_errors_map(moto: MotoServer, bucket: str) -> None:
    proxy = FaultProxy(moto.port).start()
    try:

        async def scenario(backend: S3Backend) -> None:
            proxy.fail(Fault("GET", 503, "SlowDown", times=1))
            with pytest.raises(BackendUnavailable):
                await labels(backend, bucket)
            proxy.fail(Fault("GET", 500, "InternalError", times=1))
            with pytest.raises(StorageError, match="InternalError") as caught:
                await labels(backend, bucket)
            assert type(caught.value) is StorageError
            proxy.fail(Fault("GET", 403, "AccessDenied", times=1))
            with pytest.raises(BucketNotFound):  # MinIO-style hidden missing bucket (§9.2)
                await labels(backend, bucket)
            proxy.fail(Fault("HEAD", 403, "403", times=1))
            with pytest.raises(StorageError) as denied:  # object-level 403 stays an error
                await backend.head(bucket, "k")
            assert not isinstance(denied.value, BucketNotFound | ObjectNotFound)
            proxy.fail(Fault("GET", 503, "SlowDown", times=1))
            with pytest.raises(BackendUnavailable):
                await backend.check()
            assert await labels(backend, bucket) == []

        run_with(make_backend(proxy.endpoint), scenario)
    finally:
        proxy.stop()


def test_extra_headers_go_with_every_request(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    proxy = FaultProxy(moto.port).start()
    try:

        async def scenario(backend: S3Backend) -> None:
            await backend.write(bucket, "k", source_file(tmp_path, b"x"), record_for("k", b"x"))
            assert await backend.head(bucket, "k") is not None
            assert [entry.name async for entry in backend.list(bucket)] == ["k"]

        run_with(make_backend(proxy.endpoint, extra_headers={"x-deltaglider-layout": "raw"}), scenario)
        assert len(proxy.headers) >= 3
        for headers in proxy.headers:
            assert headers.get("x-deltaglider-layout") == "raw"
            assert "x-deltaglider-layout" in headers["authorization"]  # signed with the request
    finally:
        proxy.stop()


def test_metadata_over_the_s3_limit_is_refused_before_upload(
    moto: MotoServer, bucket: str, tmp_path: Path
) -> None:
    record = record_for("k", b"x", user_metadata={"big": "v" * 2000})

    async def scenario(backend: S3Backend) -> None:
        with pytest.raises(MetadataTooLarge, match="2048"):
            await backend.write(bucket, "k", source_file(tmp_path, b"x"), record)
        assert await backend.head(bucket, "k") is None
        # Just under the limit is fine.
        fits = record_for("k", b"x", user_metadata={"big": "v" * 1500})
        await backend.write(bucket, "k", source_file(tmp_path, b"x"), fits)

    run_with(make_backend(moto.endpoint), scenario)


def test_write_from_a_missing_source(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    async def scenario(backend: S3Backend) -> None:
        with pytest.raises(StorageError, match="source"):
            await backend.write(bucket, "k", tmp_path / "nope", record_for("k", b""))

    run_with(make_backend(moto.endpoint), scenario)


def test_delete_reports_whether_it_removed(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    async def scenario(backend: S3Backend) -> None:
        await backend.write(bucket, "d/k", source_file(tmp_path, b"1"), record_for("k", b"1"))
        assert await backend.delete(bucket, "d/k") is True
        assert await backend.head(bucket, "d/k") is None
        assert await backend.delete(bucket, "d/k") is False
        assert await backend.delete(bucket, "never") is False

    run_with(make_backend(moto.endpoint), scenario)


def test_usage_bytes_sums_every_page(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    sizes = [0, 1, 10, 1000, 4097]

    async def scenario(backend: S3Backend) -> int:
        backend.list_page_size = 2
        assert await backend.usage_bytes(bucket) == 0
        for n, size in enumerate(sizes):
            data = os.urandom(size)
            await backend.write(bucket, f"p{n % 2}/o{n}", source_file(tmp_path, data), record_for("o", data))
        return await backend.usage_bytes(bucket)

    assert run_with(make_backend(moto.endpoint), scenario) == sum(sizes)


def test_directory_marker(moto: MotoServer, raw: Any, bucket: str) -> None:
    async def scenario(backend: S3Backend) -> tuple[StoredObject, StoredObject | None]:
        with pytest.raises(InvalidObjectName):
            await backend.write_directory_marker(bucket, "dir")
        return await backend.write_directory_marker(bucket, "dir/"), await backend.head(bucket, "dir/")

    written, head = run_with(make_backend(moto.endpoint), scenario)
    assert written.size == 0 and written.record is None
    assert head is not None and head.size == 0 and head.record is None
    assert head.content_type == "application/x-directory"
    stored = raw.head_object(Bucket=bucket, Key="dir/")
    assert stored["ContentType"] == "application/x-directory" and stored["Metadata"] == {}


def test_copy_replaces_the_metadata(moto: MotoServer, raw: Any, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)
    other = f"c-{uuid.uuid4().hex[:12]}"
    raw.create_bucket(Bucket=other)
    source_record = record_for("src.bin", data)

    async def scenario(backend: S3Backend) -> None:
        await backend.write(bucket, "src.bin", source_file(tmp_path, data), source_record)
        new_record = record_for("dst.bin", data, content_type="application/x-new", user_metadata={"k": "v"})
        copied = await backend.copy(bucket, "src.bin", other, "x/dst.bin", new_record)
        assert copied.size == len(data) and copied.record == new_record
        head = await backend.head(other, "x/dst.bin")
        assert head is not None
        assert_same_record(head.record, new_record)
        assert await read_all(backend, other, "x/dst.bin") == data
        source_head = await backend.head(bucket, "src.bin")
        assert source_head is not None
        assert_same_record(source_head.record, source_record)  # the source is untouched
        # Above the CopyObject limit: UploadPartCopy ranges.
        backend.copy_multipart_threshold = 6 * MiB
        backend.copy_part_size = 5 * MiB
        big = await backend.copy(bucket, "src.bin", bucket, "mp.bin", new_record)
        assert big.etag is not None and big.etag.strip('"').endswith("-3")
        assert await read_all(backend, bucket, "mp.bin") == data
        mp_head = await backend.head(bucket, "mp.bin")
        assert mp_head is not None
        assert_same_record(mp_head.record, new_record)
        with pytest.raises(ObjectNotFound):
            await backend.copy(bucket, "nope", bucket, "t", new_record)

    run_with(make_backend(moto.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
    assert raw.head_object(Bucket=bucket, Key="mp.bin")["ContentType"] == "application/octet-stream"


# ---------------------------------------------------------------------------------------------
# Objects written by others
# ---------------------------------------------------------------------------------------------


def test_unmanaged_object_has_no_record(
    moto: MotoServer, raw: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw.put_object(
        Bucket=bucket, Key="plain.txt", Body=b"hello", ContentType="text/x-custom", Metadata={"a": "b"}
    )
    raw.put_object(Bucket=bucket, Key="p/x.zip.delta", Body=b"junk", Metadata={"dg-tool": "x"})

    async def scenario(backend: S3Backend) -> tuple[StoredObject | None, StoredObject | None]:
        return await backend.head(bucket, "plain.txt"), await backend.head(bucket, "p/x.zip.delta")

    with caplog.at_level(logging.WARNING, logger="deltaglider_proxy.storage.s3"):
        plain, broken = run_with(make_backend(moto.endpoint), scenario)
    assert plain is not None and plain.record is None and plain.record_loaded
    assert plain.size == 5 and plain.content_type == "text/x-custom"
    assert plain.etag == f'"{hashlib.md5(b"hello").hexdigest()}"'
    assert broken is not None and broken.record is None
    pathological = [r for r in caplog.records if "PATHOLOGICAL" in r.getMessage()]
    assert len(pathological) == 1  # the plain object is just unmanaged, not suspicious
    assert pathological[0].levelno == logging.ERROR and "p/x.zip.delta" in pathological[0].getMessage()


def test_cli_written_delta_is_recognised(moto: MotoServer, raw: Any, bucket: str) -> None:
    # The deltaglider CLI writes dg-ref-key with the full key and no dg-note / dg-md5 (§1.6).
    raw.put_object(
        Bucket=bucket,
        Key="ror/es/1.64.2/app.zip.delta",
        Body=b"vcdiff",
        Metadata={
            "dg-tool": "deltaglider/5.0.0",
            "dg-original-name": "app.zip",
            "dg-file-sha256": "cd" * 32,
            "dg-file-size": "123456",
            "dg-created-at": "2024-01-02T03:04:05Z",
            "dg-ref-key": "ror/es/1.64.2/reference.bin",
            "dg-ref-sha256": "ef" * 32,
            "dg-delta-size": "6",
            "dg-delta-cmd": "xdelta3 -e -9 -s reference.bin app.zip app.zip.delta",
        },
    )

    async def scenario(backend: S3Backend) -> StoredObject | None:
        return await backend.head(bucket, "ror/es/1.64.2/app.zip.delta")

    head = run_with(make_backend(moto.endpoint), scenario)
    assert head is not None and head.record is not None
    record = head.record
    assert record.note == "delta" and record.ref_path == "reference.bin" and record.ref_sha256 == "ef" * 32
    assert record.file_size == 123456 and record.original_name == "app.zip" and record.md5 == ""
    assert record.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert head.etag == f'"{hashlib.md5(b"vcdiff").hexdigest()}"'  # the fallback ETag source


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------

LISTED = [
    "a.zip-1",
    "a.zip.delta",
    "a.zip0",
    "a/",
    "a/b",
    "a/c.delta",
    "a.zip",
    "reference.bin",
    "rel/reference.bin",
    "rel/v1.zip.delta",
    "rel/v1.zip-notes",
    "rel/v10.zip",
    "é.delta",
    "z",
]


def expected_listing(names: list[str], prefix: str, after: str, delimiter: str | None) -> list[str]:
    keyed: dict[str, tuple[bytes, bytes]] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            rolled = prefix + rest[: rest.index(delimiter) + 1]
            keyed["CP:" + rolled] = (raw_name(rolled), raw_name(rolled))
        else:
            keyed[name] = (logical_sort_key(name), raw_name(name))
    return [n for n, key in sorted(keyed.items(), key=lambda item: item[1]) if key[0] > raw_name(after)]


def test_listing_is_in_logical_order(moto: MotoServer, raw: Any, bucket: str) -> None:
    for name in LISTED:
        raw.put_object(Bucket=bucket, Key=name, Body=name.encode())
    cases = [
        (prefix, after, delimiter)
        for prefix in ("", "a", "a.zip", "a/", "rel/", "rel/v1")
        for after in ("", "a", "a.zip", "a.zip-0", "a/", "a/b", "rel/v1.zip", "zz")
        for delimiter in (None, "/")
    ]

    async def scenario(backend: S3Backend) -> None:
        for page, buffer_limit in ((1000, 4096), (2, 4096), (1, 0), (3, 1)):
            backend.list_page_size = page
            backend.list_buffer_limit = buffer_limit
            for prefix, after, delimiter in cases:
                got = await labels(backend, bucket, prefix, after, delimiter)
                assert got == expected_listing(LISTED, prefix, after, delimiter), (
                    page,
                    prefix,
                    after,
                    delimiter,
                )

    run_with(make_backend(moto.endpoint), scenario)
    # Spot-check the subtle case in plain words: the delta sorts as its logical name.
    assert expected_listing(LISTED, "a.zip", "", None) == ["a.zip", "a.zip.delta", "a.zip-1", "a.zip0"]


def test_listing_entries_are_cheap(moto: MotoServer, bucket: str, tmp_path: Path) -> None:
    data = b"0123456789"

    async def scenario(backend: S3Backend) -> list[StoredObject | CommonPrefix]:
        await backend.write(bucket, "d/x.zip.delta", source_file(tmp_path, data), record_for("x.zip", data))
        return [entry async for entry in backend.list(bucket, "d/")]

    (entry,) = run_with(make_backend(moto.endpoint), scenario)
    assert isinstance(entry, StoredObject)
    assert entry.name == "d/x.zip.delta" and entry.size == len(data) and entry.record is None
    assert entry.record_loaded is False and entry.etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert entry.modified.tzinfo is not None


def test_long_listing_with_lookahead(moto: MotoServer, raw: Any, bucket: str) -> None:
    names = [f"app-{n:03d}.zip" for n in range(60)] + ["app.delta", "app-010.delta", "b"]
    for name in names:
        raw.put_object(Bucket=bucket, Key=name, Body=b"")

    async def scenario(backend: S3Backend) -> None:
        for page, buffer_limit in ((7, 5), (1000, 4096), (7, 4096)):
            backend.list_page_size = page
            backend.list_buffer_limit = buffer_limit
            got = await labels(backend, bucket)
            assert got == expected_listing(names, "", "", None)
            assert got[0] == "app.delta" and got[-1] == "b"

    run_with(make_backend(moto.endpoint), scenario)


def test_listing_rejects_other_delimiters(moto: MotoServer, bucket: str) -> None:
    async def scenario(backend: S3Backend) -> None:
        with pytest.raises(ValueError, match="delimiter"):
            await labels(backend, bucket, delimiter=".")

    run_with(make_backend(moto.endpoint), scenario)


def test_if_match_replaces_only_the_version_it_names(
    moto: MotoServer, raw: Any, bucket: str, tmp_path: Path
) -> None:
    big = os.urandom(11 * MiB)

    async def scenario(backend: S3Backend) -> None:
        for data in (b"rotated bytes", big):  # single PUT, then multipart
            first = await backend.write(bucket, "obj", source_file(tmp_path, b"v1"), record_for("obj", b"v1"))
            assert first.version is not None
            head = await backend.head(bucket, "obj")
            assert head is not None and head.version == first.version
            raw.put_object(Bucket=bucket, Key="obj", Body=b"a client's newer write")
            later = source_file(tmp_path, data)
            with pytest.raises(ObjectChanged):
                await backend.write(
                    bucket, "obj", later, record_for("obj", data), move=True, if_match=first.version
                )
            assert later.exists()
            assert await read_all(backend, bucket, "obj") == b"a client's newer write"
            current = await backend.head(bucket, "obj")
            assert current is not None
            await backend.write(bucket, "obj", later, record_for("obj", data), if_match=current.version)
            assert await read_all(backend, bucket, "obj") == data
        # Deleted meanwhile: not brought back.
        gone = await backend.head(bucket, "obj")
        assert gone is not None
        raw.delete_object(Bucket=bucket, Key="obj")
        with pytest.raises(ObjectChanged):
            await backend.write(
                bucket, "obj", source_file(tmp_path, b"r"), record_for("obj", b"r"), if_match=gone.version
            )
        assert await backend.head(bucket, "obj") is None
        uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert uploads == []  # the refused multipart completion was aborted

    run_with(make_backend(moto.endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB), scenario)
