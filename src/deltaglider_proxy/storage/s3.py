"""S3 backend: each proxy bucket is a real bucket, the record rides as user metadata
(storage.md §1.3, §1.5.2, §10.2).

Object names are the layout names themselves (``releases/reference.bin``,
``releases/v1.zip.delta``, ``releases/readme.txt``); the DeltaGlider record is
``x-amz-meta-dg-*`` user metadata on the object, shared with the ``deltaglider`` CLI (§1.6), and
every stored object is ``application/octet-stream``.

How it stays well-behaved on the request path:

* One aiobotocore client per backend, with a bounded connection pool. Nothing blocks the event
  loop: bodies are streamed from the spool file by aiohttp's payload reader (in threads), and
  payload signing is off because botocore would hash the whole body on the loop to sign it; a
  Content-MD5 computed in a worker thread lets the server verify every upload instead.
* Uploads stream from disk: one PutObject up to ``multipart_threshold``, a multipart upload
  (aborted on any failure) above it. S3 makes a PUT visible all at once, so readers never see a
  torn object.
* Create-only writes use ``If-None-Match: *`` and fall back to HEAD-then-PUT on servers that
  answer 501.
* Listings come back in logical order although S3 lists in physical order (see s3_listing).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from deltaglider_proxy import __version__
from deltaglider_proxy.storage.base import (
    BackendUnavailable,
    BucketInfo,
    BucketNotFound,
    CommonPrefix,
    InvalidObjectName,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoredObject,
)
from deltaglider_proxy.storage.encryption_format import NATIVE_MARKER_KEY, ServerSideEncryption
from deltaglider_proxy.storage.metadata import (
    DELTA_SUFFIX,
    REFERENCE_NAME,
    S3_METADATA_LIMIT,
    FileMetadata,
    from_s3_metadata,
    read_s3_metadata,
    to_s3_metadata,
    utcnow,
)
from deltaglider_proxy.storage.s3_errors import (
    CLIENT_ERRORS,
    CONNECTION_ERRORS,
    error_code,
    http_status,
    is_not_found,
    is_not_implemented,
    is_precondition_failed,
    is_transient_write_error,
    to_storage_error,
)
from deltaglider_proxy.storage.s3_listing import Entry, LogicalOrder, raw_name

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import (
        CompletedPartTypeDef,
        CompleteMultipartUploadRequestTypeDef,
        CopyObjectRequestTypeDef,
        CreateBucketRequestTypeDef,
        GetObjectRequestTypeDef,
        HeadObjectOutputTypeDef,
        ListBucketsRequestTypeDef,
        ListObjectsV2RequestTypeDef,
        PutObjectRequestTypeDef,
    )

_log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK_SIZE = MiB
OCTET_STREAM = "application/octet-stream"
DIRECTORY_CONTENT_TYPE = "application/x-directory"
CREDENTIALS_REQUIRED = (
    "S3 backend requires explicit credentials: set DGP_BE_AWS_ACCESS_KEY_ID and DGP_BE_AWS_SECRET_ACCESS_KEY"
)
# S3's own limits: a single PUT holds at most 5 GiB, an upload at most 10 000 parts of at least
# 5 MiB (all but the last) and at most 5 GiB each.
MAX_SINGLE_PUT = 5 * GiB
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
# PutObject/UploadPart are sent again after these pauses when they fail transiently (§10.2).
WRITE_RETRY_DELAYS = (0.1, 0.2, 0.4)
ABORT_RETRY_DELAYS = (0.25, 0.5, 1.0)
# How long a HeadBucket success is trusted when a HEAD miss must tell "no key" from "no bucket".
BUCKET_CACHE_SECONDS = 10.0


class BackendConfigError(StorageError, ValueError):
    """The backend cannot be built from its configuration."""


class MetadataTooLarge(StorageError):
    """The record does not fit S3's 2 KiB user-metadata limit (storage.md §1.5.2)."""


# ---------------------------------------------------------------------------------------------
# Metadata on the wire
# ---------------------------------------------------------------------------------------------


def _encode_value(value: str) -> str:
    """An HTTP-safe header value. Names in records may hold any character, but SigV4 and S3
    only carry printable ASCII intact; anything else travels as an RFC 2047 encoded word, the
    form S3 itself uses when it returns non-ASCII metadata."""
    plain = value.isascii() and value.isprintable() and value == value.strip() and "  " not in value
    if plain and not value.startswith("=?"):
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def wire_metadata(record: FileMetadata, name: str) -> dict[str, str]:
    """The user metadata stored with object ``name``; MetadataTooLarge past S3's limit."""
    prefix = name.rsplit("/", 1)[0] if "/" in name else ""
    meta = {key: _encode_value(value) for key, value in to_s3_metadata(record, prefix=prefix).items()}
    size = sum(len(key.encode()) + len(value.encode()) for key, value in meta.items())
    if size > S3_METADATA_LIMIT:
        raise MetadataTooLarge(
            f"metadata of {name!r} is {size} bytes, over S3's {S3_METADATA_LIMIT}-byte user-metadata "
            "limit (large client x-amz-meta-* headers cannot be stored on an S3 backend)"
        )
    return meta


read_metadata = read_s3_metadata


def _parse_record(bucket: str, name: str, meta: Mapping[str, str]) -> FileMetadata | None:
    try:
        record = from_s3_metadata(meta)
    except ValueError:
        record = None
    if record is not None:
        return record
    layout_name = name.endswith(DELTA_SUFFIX) or name.rsplit("/", 1)[-1] == REFERENCE_NAME
    if layout_name or any(key.startswith("dg-") for key in meta):
        # Served as unmanaged passthrough; a delta or reference in that state cannot be decoded.
        _log.log(
            logging.ERROR if layout_name else logging.WARNING,
            "PATHOLOGICAL: S3 object %s/%s has no valid DeltaGlider metadata (keys: %s); "
            "serving it as an unmanaged object",
            bucket,
            name,
            ", ".join(sorted(meta)) or "none",
        )
    return None


def _as_utc(value: datetime | None) -> datetime:
    return value.astimezone(UTC) if value is not None else utcnow()


# ---------------------------------------------------------------------------------------------
# Upload bodies
# ---------------------------------------------------------------------------------------------


class _FileSlice(io.RawIOBase):
    """Bytes [offset, offset + length) of a file as a seekable stream of its own.

    aiohttp reads it in worker threads; botocore seeks it back to 0 to resend on a retry. It has
    no ``name`` on purpose: aiohttp would turn a file name into a Content-Disposition header,
    which S3 would store with the object.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._length = length
        self._position = 0

    @classmethod
    def open(cls, path: Path, offset: int, length: int) -> _FileSlice:
        """Blocking: call in a worker thread."""
        return cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC), offset, length)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed upload body")
        count = min(len(buffer), self._length - self._position)
        if count <= 0:
            return 0
        data = os.pread(self._fd, count, self._offset + self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _close_opened(future: asyncio.Future[_FileSlice]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


async def _open_slice(path: Path, offset: int, length: int) -> _FileSlice:
    """Open an upload body in a worker thread, never leaking it when the caller is cancelled."""
    opened = asyncio.get_running_loop().run_in_executor(None, _FileSlice.open, path, offset, length)
    try:
        return await asyncio.shield(opened)
    except asyncio.CancelledError:
        opened.add_done_callback(_close_opened)
        raise


def _content_md5(path: Path, offset: int, length: int) -> str:
    """Base64 MD5 of a file range (blocking: call in a worker thread)."""
    digest = hashlib.md5(usedforsecurity=False)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < length:
            chunk = os.pread(fd, min(CHUNK_SIZE, length - done), offset + done)
            if not chunk:
                raise StorageError(f"{path} shrank while it was being uploaded")
            digest.update(chunk)
            done += len(chunk)
    finally:
        os.close(fd)
    return base64.b64encode(digest.digest()).decode("ascii")


def _plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) covering ``size`` bytes in at most MAX_PARTS parts."""
    part_size = min(max(part_size, math.ceil(size / MAX_PARTS)), MAX_PART_SIZE)
    return [
        (number, offset, min(part_size, size - offset))
        for number, offset in enumerate(range(0, size, part_size), 1)
    ]


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Precondition:
    """What must hold for a write to go ahead: no object (``absent``) or exactly the version
    whose ETag is ``match``."""

    absent: bool = False
    match: str | None = None

    @property
    def any(self) -> bool:
        return self.absent or self.match is not None


def _refused(exc: BaseException, when: _Precondition) -> bool:
    """The service refused a conditional write because its condition does not hold (a
    replace-this-version write of an object that is gone answers 404)."""
    return is_precondition_failed(exc) or (when.match is not None and is_not_found(exc))


class OpenBody:
    """The bytes of one GetObject answer, read piece by piece; ``close`` releases the connection
    (or drops it, when the reader stopped early)."""

    def __init__(self, body: Any, bucket: str, name: str) -> None:
        self._body = body
        self._bucket = bucket
        self._name = name

    def __aiter__(self) -> OpenBody:
        return self

    async def __anext__(self) -> bytes:
        if self._body is None:
            raise StopAsyncIteration
        try:
            chunk: bytes = await self._body.read(CHUNK_SIZE)
        except CLIENT_ERRORS as exc:
            raise to_storage_error(exc, "GetObject", self._bucket, self._name) from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None


class S3Backend:
    """Backend storing each bucket as a bucket of an S3-compatible service (module docstring).

    ``extra_headers`` are sent (signed) with every request, e.g. ``x-deltaglider-layout: raw``
    when the backend is itself a DeltaGlider proxy with layout access.

    Tunables tests may lower after construction: ``list_page_size`` (ListObjectsV2 MaxKeys),
    ``list_buffer_limit`` (entries a listing may hold back for reordering before it looks
    blocking ``.delta`` names up directly), ``part_concurrency``, ``copy_multipart_threshold``
    and ``copy_part_size``.
    """

    def __init__(
        self,
        endpoint: str | None,
        region: str,
        force_path_style: bool,
        access_key_id: str | None,
        secret_access_key: str | None,
        *,
        use_credential_chain: bool = False,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        max_pool_connections: int = 50,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        extra_headers: Mapping[str, str] | None = None,
        server_side_encryption: ServerSideEncryption | None = None,
    ) -> None:
        if not use_credential_chain and not (access_key_id and secret_access_key):
            raise BackendConfigError(CREDENTIALS_REQUIRED)
        if part_size < MIN_PART_SIZE or part_size > MAX_PART_SIZE:
            raise BackendConfigError(f"S3 part size must be between 5 MiB and 5 GiB, not {part_size}")
        if multipart_threshold < 1:
            raise BackendConfigError(f"S3 multipart threshold must be positive, not {multipart_threshold}")
        if max_pool_connections < 1 or max_attempts < 1:
            raise BackendConfigError("S3 max_pool_connections and max_attempts must be at least 1")
        self.endpoint = endpoint
        self.region = region
        self._force_path_style = force_path_style
        # None for both lets botocore's standard chain (env, profile, instance role) decide.
        self._access_key_id = None if use_credential_chain else access_key_id
        self._secret_access_key = None if use_credential_chain else secret_access_key
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._max_pool_connections = max_pool_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._extra_headers = dict(extra_headers or {})
        self._sse = server_side_encryption
        self.list_page_size = 1000
        self.list_buffer_limit = 4096
        self.part_concurrency = 4
        self.copy_multipart_threshold = MAX_SINGLE_PUT
        self.copy_part_size = 512 * MiB
        self._client: S3Client | None = None
        self._exit_stack: AsyncExitStack | None = None
        # Cleared for good when the server answers If-None-Match with 501 (older MinIO, Ceph...).
        self._conditional_writes = True
        self._known_buckets: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the shared client. No request is sent: missing buckets or an endpoint that is
        down do not stop the proxy from starting (see :meth:`check`)."""
        if self._client is not None:
            return
        config = AioConfig(
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
            max_pool_connections=self._max_pool_connections,
            retries={"mode": "standard", "total_max_attempts": self._max_attempts},
            s3={
                "addressing_style": "path" if self._force_path_style else "virtual",
                "payload_signing_enabled": False,
            },
            # S3-compatible stores (Hetzner, MinIO, B2) reject the SDK's default CRC headers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra=f"deltaglider-proxy/{__version__}",
            # Loads the service model in a thread instead of on the event loop.
            warm_up_loader_caches=True,
        )
        stack = AsyncExitStack()
        session = AioSession()
        self._client = await stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                config=config,
            )
        )
        self._exit_stack = stack
        if self._extra_headers:
            headers = self._extra_headers

            def add_headers(request: Any, **_kwargs: Any) -> None:
                # Before signing, so the headers are covered by the signature.
                for name, value in headers.items():
                    request.headers[name] = value

            self._client.meta.events.register("before-sign.s3", add_headers)

    async def close(self) -> None:
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    async def check(self) -> None:
        """Readiness: BackendUnavailable when the endpoint cannot be reached or answers 5xx.

        An AccessDenied still proves the endpoint is there (credentials scoped to some buckets
        may not list them all); rejected credentials raise StorageError.
        """
        try:
            await self._s3.list_buckets()
        except CLIENT_ERRORS as exc:
            status = http_status(exc)
            if error_code(exc) == "AccessDenied":
                return
            error = to_storage_error(exc, "ListBuckets", "-")
            if status is not None and status >= 500:
                raise BackendUnavailable(str(error)) from exc
            raise error from exc

    def _sse_params(self) -> dict[str, Any]:
        """Request parameters asking the service to encrypt what it stores (storage.md §11.6)."""
        sse = self._sse
        if sse is None:
            return {}
        if sse.mode == "sse-s3":
            return {"ServerSideEncryption": "AES256"}
        return {
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": sse.kms_key_id,
            "BucketKeyEnabled": sse.bucket_key_enabled,
        }

    def _with_native_marker(self, metadata: dict[str, str]) -> dict[str, str]:
        # Write-only marker (never parsed back): tells an operator looking at the bucket why
        # the objects are encrypted although the records carry no proxy-AES marker.
        if self._sse is not None:
            metadata[NATIVE_MARKER_KEY] = self._sse.mode
        return metadata

    @property
    def _s3(self) -> S3Client:
        if self._client is None:
            raise StorageError("the S3 backend is not started (call start() first)")
        return self._client

    async def _call(
        self, operation: str, bucket: str, key: str | None, call: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await call()
        except CLIENT_ERRORS as exc:
            raise to_storage_error(exc, operation, bucket, key) from exc

    # -- buckets ----------------------------------------------------------------------------------

    async def list_buckets(self) -> list[BucketInfo]:
        buckets: list[BucketInfo] = []
        request: ListBucketsRequestTypeDef = {}
        while True:
            page = await self._call("ListBuckets", "-", None, lambda: self._s3.list_buckets(**request))
            buckets.extend(
                BucketInfo(name=b["Name"], created=_as_utc(b.get("CreationDate")))
                for b in page.get("Buckets", [])
            )
            token = page.get("ContinuationToken")
            if not token:
                return sorted(buckets, key=lambda bucket: bucket.name)
            request["ContinuationToken"] = token

    async def bucket_exists(self, bucket: str) -> bool:
        """HeadBucket; every answer but success means absent (§10.2), no answer is an error."""
        try:
            await self._s3.head_bucket(Bucket=bucket)
        except CONNECTION_ERRORS as exc:
            raise to_storage_error(exc, "HeadBucket", bucket) from exc
        except CLIENT_ERRORS as exc:
            if http_status(exc) == 503:
                raise to_storage_error(exc, "HeadBucket", bucket) from exc
            self._known_buckets.pop(bucket, None)
            return False
        self._known_buckets[bucket] = time.monotonic() + BUCKET_CACHE_SECONDS
        return True

    async def create_bucket(self, bucket: str) -> bool:
        # us-east-1 answers 200 to re-creating a bucket one owns, so ask first.
        if await self.bucket_exists(bucket):
            return False
        request: CreateBucketRequestTypeDef = {"Bucket": bucket}
        if self.region and self.region != "us-east-1":
            location = cast("BucketLocationConstraintType", self.region)
            request["CreateBucketConfiguration"] = {"LocationConstraint": location}
        try:
            await self._s3.create_bucket(**request)
        except CLIENT_ERRORS as exc:
            if error_code(exc) == "BucketAlreadyOwnedByYou":
                return False
            raise to_storage_error(exc, "CreateBucket", bucket) from exc
        self._known_buckets[bucket] = time.monotonic() + BUCKET_CACHE_SECONDS
        return True

    async def delete_bucket(self, bucket: str) -> None:
        self._known_buckets.pop(bucket, None)
        await self._call("DeleteBucket", bucket, None, lambda: self._s3.delete_bucket(Bucket=bucket))

    async def usage_bytes(self, bucket: str) -> int:
        total = 0
        async for page in self._pages(bucket, "", "", None):
            total += sum(item.get("Size", 0) for item in page.get("Contents", []))
        return total

    async def _bucket_known(self, bucket: str) -> bool:
        expiry = self._known_buckets.get(bucket)
        if expiry is not None and expiry > time.monotonic():
            return True
        return await self.bucket_exists(bucket)

    # -- objects: reading -----------------------------------------------------------------------

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        response = await self._head_object(bucket, name)
        return None if response is None else self._stored(bucket, name, response)

    async def _head_object(self, bucket: str, name: str) -> HeadObjectOutputTypeDef | None:
        """HeadObject; None when the object is absent, BucketNotFound when the bucket is."""
        try:
            return await self._s3.head_object(Bucket=bucket, Key=name)
        except CLIENT_ERRORS as exc:
            # A HEAD answer has no body, so a 404 cannot say which one is missing.
            if is_not_found(exc):
                if not await self._bucket_known(bucket):
                    raise BucketNotFound(bucket) from None
                return None
            raise to_storage_error(exc, "HeadObject", bucket, name) from exc

    def _stored(self, bucket: str, name: str, response: HeadObjectOutputTypeDef) -> StoredObject:
        record = _parse_record(bucket, name, read_metadata(response.get("Metadata", {})))
        return StoredObject(
            name=name,
            size=response.get("ContentLength", 0),
            modified=_as_utc(response.get("LastModified")),
            record=record,
            etag=response.get("ETag"),
            content_type=record.content_type if record is not None else response.get("ContentType"),
            version=response.get("ETag"),
        )

    async def read(
        self, bucket: str, name: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) with one ranged GetObject."""
        _record, body = await self.open_read(bucket, name, start, end)
        try:
            async for chunk in body:
                yield chunk
        finally:
            body.close()

    async def open_read(
        self, bucket: str, name: str, start: int = 0, end: int | None = None
    ) -> tuple[FileMetadata | None, OpenBody]:
        """One ranged GetObject, sent now: the record the object had when it answered (None when
        it has none, or for an empty range) and its bytes [start, end). The caller closes the
        body, also when it reads none of it — a wrapper that needs the record before it can
        decide how to read saves a HeadObject per read this way."""
        start = max(start, 0)
        if end is not None and end <= start:
            return None, OpenBody(None, bucket, name)
        request: GetObjectRequestTypeDef = {"Bucket": bucket, "Key": name}
        if start > 0 or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = await self._s3.get_object(**request)
        except CLIENT_ERRORS as exc:
            if http_status(exc) == 416:
                return None, OpenBody(None, bucket, name)  # the range starts at or past the end
            if error_code(exc) != "NoSuchBucket" and is_not_found(exc):
                raise ObjectNotFound(name) from None
            raise to_storage_error(exc, "GetObject", bucket, name) from exc
        record = _parse_record(bucket, name, read_metadata(response.get("Metadata", {})))
        return record, OpenBody(response["Body"], bucket, name)

    # -- objects: writing -----------------------------------------------------------------------

    async def write(
        self,
        bucket: str,
        name: str,
        source: Path,
        record: FileMetadata,
        *,
        move: bool = False,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> StoredObject:
        metadata = self._with_native_marker(wire_metadata(record, name))
        when = _Precondition(absent=if_absent, match=if_match)
        try:
            size = (await asyncio.to_thread(os.stat, source)).st_size
        except OSError as exc:
            raise StorageError(f"cannot read upload source {source}: {exc}") from exc
        if size > min(self.multipart_threshold, MAX_SINGLE_PUT):
            etag = await self._multipart_upload(bucket, name, source, size, metadata, when)
        else:
            etag = await self._put_file(bucket, name, source, size, metadata, when)
        if move:
            await asyncio.to_thread(source.unlink, missing_ok=True)
        return StoredObject(
            name=name,
            size=size,
            modified=utcnow(),
            record=record,
            etag=etag,
            content_type=record.content_type,
            version=etag,
        )

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        """A zero-byte ``application/x-directory`` object without DeltaGlider metadata (§1.3)."""
        if not name.endswith("/"):
            raise InvalidObjectName(f"a directory marker name ends with '/': {name!r}")

        async def attempt() -> str:
            response = await self._s3.put_object(
                Bucket=bucket,
                Key=name,
                Body=b"",
                ContentType=DIRECTORY_CONTENT_TYPE,
                Metadata=self._with_native_marker({}),
                **self._sse_params(),
            )
            return response["ETag"]

        try:
            etag = await self._retrying(attempt)
        except CLIENT_ERRORS as exc:
            raise to_storage_error(exc, "PutObject", bucket, name) from exc
        return StoredObject(
            name=name, size=0, modified=utcnow(), record=None, etag=etag, content_type=DIRECTORY_CONTENT_TYPE
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a PutObject/UploadPart attempt, again after 100/200/400 ms on a transient failure
        (on top of botocore's own retries: Hetzner answers transient 400s it does not retry)."""
        for delay in WRITE_RETRY_DELAYS:
            try:
                return await attempt()
            except CLIENT_ERRORS as exc:
                if not is_transient_write_error(exc):
                    raise
                _log.info(
                    "S3 write failed transiently (%s %s), retrying in %.1fs", http_status(exc), exc, delay
                )
            await asyncio.sleep(delay)
        return await attempt()

    async def _put_file(
        self, bucket: str, name: str, source: Path, size: int, metadata: dict[str, str], when: _Precondition
    ) -> str:
        conditional = when.any and self._conditional_writes
        if when.any and not conditional:
            await self._check_unconditionally(bucket, name, when)
        md5 = await asyncio.to_thread(_content_md5, source, 0, size)

        async def attempt() -> str:
            # A fresh handle per try: the previous one may sit anywhere after a failure.
            body = await _open_slice(source, 0, size)
            try:
                request: PutObjectRequestTypeDef = {
                    "Bucket": bucket,
                    "Key": name,
                    "Body": cast("IO[bytes]", body),
                    "ContentLength": size,
                    "ContentMD5": md5,
                    "ContentType": OCTET_STREAM,
                    "Metadata": metadata,
                }
                if conditional and when.absent:
                    request["IfNoneMatch"] = "*"
                if conditional and when.match is not None:
                    request["IfMatch"] = when.match
                response = await self._s3.put_object(**request, **self._sse_params())
            finally:
                body.close()
            return response["ETag"]

        try:
            return await self._retrying(attempt)
        except CLIENT_ERRORS as exc:
            if conditional and _refused(exc, when):
                return await self._lost_condition(bucket, name, metadata, when)
            if conditional and is_not_implemented(exc):
                self._disable_conditional_writes()
                return await self._put_file(bucket, name, source, size, metadata, when)
            raise to_storage_error(exc, "PutObject", bucket, name) from exc

    async def _lost_condition(
        self, bucket: str, name: str, metadata: Mapping[str, str], when: _Precondition
    ) -> str:
        """A conditional write was refused. If the object there is this very write (its response
        was lost and the request resent), that is success; otherwise ObjectExists (create-only)
        or ObjectChanged (replace-this-version)."""
        existing = await self._head_object(bucket, name)
        sent = {key.lower(): value for key, value in metadata.items()}
        if existing is not None and {k.lower(): v for k, v in existing.get("Metadata", {}).items()} == sent:
            return existing.get("ETag", "")
        if when.absent:
            raise ObjectExists(name)
        raise ObjectChanged(f"{bucket}/{name} is no longer the version this write was meant to replace")

    async def _check_unconditionally(self, bucket: str, name: str, when: _Precondition) -> None:
        """The HEAD-then-write fallback for services without conditional writes (racy)."""
        existing = await self._head_object(bucket, name)
        if when.absent and existing is not None:
            raise ObjectExists(name)
        if when.match is not None and (existing is None or existing.get("ETag") != when.match):
            raise ObjectChanged(f"{bucket}/{name} is no longer the version this write was meant to replace")

    def _disable_conditional_writes(self) -> None:
        _log.warning(
            "S3 endpoint %s does not support conditional writes (If-None-Match answered 501); "
            "create-only writes fall back to HEAD-then-PUT, which two concurrent writers can race",
            self.endpoint or "(AWS)",
        )
        self._conditional_writes = False

    # -- multipart upload -------------------------------------------------------------------------

    async def _multipart_upload(
        self, bucket: str, name: str, source: Path, size: int, metadata: dict[str, str], when: _Precondition
    ) -> str:
        # Cheap early answer before sending the whole body; the completion decides for real.
        if when.any:
            await self._check_unconditionally(bucket, name, when)
        created = await self._call(
            "CreateMultipartUpload",
            bucket,
            name,
            lambda: self._s3.create_multipart_upload(
                Bucket=bucket, Key=name, ContentType=OCTET_STREAM, Metadata=metadata, **self._sse_params()
            ),
        )
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(bucket, name, upload_id, source, size)
            etag = await self._complete(bucket, name, upload_id, parts, when)
        except BaseException:
            # Shielded: a cancelled write must not leave its parts billed on the backend.
            await asyncio.shield(self._abort(bucket, name, upload_id))
            raise
        if etag is None:  # a refused conditional completion leaves the upload open
            await self._abort(bucket, name, upload_id)
            return await self._lost_condition(bucket, name, metadata, when)
        return etag

    async def _upload_parts(
        self, bucket: str, name: str, upload_id: str, source: Path, size: int
    ) -> list[CompletedPartTypeDef]:
        plan = iter(_plan_parts(size, self.part_size))
        etags: dict[int, str] = {}

        async def worker() -> None:
            for number, offset, length in plan:  # shared: each part goes to one worker
                etags[number] = await self._upload_part(
                    bucket, name, upload_id, source, number, offset, length
                )

        workers = [asyncio.create_task(worker()) for _ in range(max(1, self.part_concurrency))]
        try:
            done, _pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise failure
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return [{"ETag": etags[number], "PartNumber": number} for number in sorted(etags)]

    async def _upload_part(
        self, bucket: str, name: str, upload_id: str, source: Path, number: int, offset: int, length: int
    ) -> str:
        md5 = await asyncio.to_thread(_content_md5, source, offset, length)

        async def attempt() -> str:
            body = await _open_slice(source, offset, length)
            try:
                response = await self._s3.upload_part(
                    Bucket=bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=cast("IO[bytes]", body),
                    ContentLength=length,
                    ContentMD5=md5,
                )
            finally:
                body.close()
            return response["ETag"]

        try:
            return await self._retrying(attempt)
        except CLIENT_ERRORS as exc:
            raise to_storage_error(exc, "UploadPart", bucket, name) from exc

    async def _complete(
        self, bucket: str, name: str, upload_id: str, parts: list[CompletedPartTypeDef], when: _Precondition
    ) -> str | None:
        """CompleteMultipartUpload; None when its precondition (``when``) does not hold."""
        conditional = when.any and self._conditional_writes
        if when.any and not conditional:
            try:
                await self._check_unconditionally(bucket, name, when)
            except (ObjectExists, ObjectChanged):
                return None
        request: CompleteMultipartUploadRequestTypeDef = {
            "Bucket": bucket,
            "Key": name,
            "UploadId": upload_id,
            "MultipartUpload": {"Parts": parts},
        }
        if conditional and when.absent:
            request["IfNoneMatch"] = "*"
        if conditional and when.match is not None:
            request["IfMatch"] = when.match
        try:
            response = await self._s3.complete_multipart_upload(**request)
        except CLIENT_ERRORS as exc:
            if conditional and _refused(exc, when):
                return None
            if conditional and is_not_implemented(exc):
                self._disable_conditional_writes()
                return await self._complete(bucket, name, upload_id, parts, when)
            raise to_storage_error(exc, "CompleteMultipartUpload", bucket, name) from exc
        return response.get("ETag", "")

    async def _abort(self, bucket: str, name: str, upload_id: str) -> None:
        # A part whose request we dropped may still be landing at the server; S3 documents that
        # an abort racing such a part can fail or leave the upload listed, so a failed abort is
        # tried again once those parts have had time to finish.
        for delay in (*ABORT_RETRY_DELAYS, None):
            try:
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)
                return
            except CLIENT_ERRORS as exc:
                if error_code(exc) == "NoSuchUpload":
                    return
                if delay is None:
                    # Logged by the mapping; a lifecycle rule on the bucket reclaims what is left.
                    to_storage_error(exc, "AbortMultipartUpload", bucket, name)
                    return
            await asyncio.sleep(delay)

    # -- objects: copy and delete ---------------------------------------------------------------

    async def copy(
        self, bucket: str, source_name: str, target_bucket: str, target_name: str, record: FileMetadata
    ) -> StoredObject:
        """Server-side copy of ``source_name`` to ``target_name`` with ``record`` as its metadata.

        The bytes never pass through the proxy: CopyObject, or UploadPartCopy ranges above
        ``copy_multipart_threshold`` (5 GiB, CopyObject's limit). The copy is pinned to the
        source version that was measured, so a concurrent overwrite fails it instead of
        mixing two versions.
        """
        metadata = self._with_native_marker(wire_metadata(record, target_name))
        source = await self._head_object(bucket, source_name)
        if source is None:
            raise ObjectNotFound(source_name)
        size = source.get("ContentLength", 0)
        source_etag = source.get("ETag", "")
        if size > self.copy_multipart_threshold:
            etag = await self._multipart_copy(
                bucket, source_name, source_etag, size, target_bucket, target_name, metadata
            )
            modified = utcnow()
        else:
            request: CopyObjectRequestTypeDef = {
                "Bucket": target_bucket,
                "Key": target_name,
                "CopySource": {"Bucket": bucket, "Key": source_name},
                "CopySourceIfMatch": source_etag,
                "MetadataDirective": "REPLACE",
                "Metadata": metadata,
                "ContentType": OCTET_STREAM,
            }
            response = await self._call(
                "CopyObject",
                target_bucket,
                target_name,
                lambda: self._s3.copy_object(**request, **self._sse_params()),
            )
            result = response.get("CopyObjectResult", {})
            etag = result.get("ETag", "")
            modified = _as_utc(result.get("LastModified"))
        return StoredObject(
            name=target_name,
            size=size,
            modified=modified,
            record=record,
            etag=etag,
            content_type=record.content_type,
            version=etag,
        )

    async def _multipart_copy(
        self,
        bucket: str,
        source_name: str,
        source_etag: str,
        size: int,
        target_bucket: str,
        target_name: str,
        metadata: dict[str, str],
    ) -> str:
        created = await self._call(
            "CreateMultipartUpload",
            target_bucket,
            target_name,
            lambda: self._s3.create_multipart_upload(
                Bucket=target_bucket,
                Key=target_name,
                ContentType=OCTET_STREAM,
                Metadata=metadata,
                **self._sse_params(),
            ),
        )
        upload_id = created["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, offset, length in _plan_parts(size, self.copy_part_size):
                try:
                    response = await self._s3.upload_part_copy(
                        Bucket=target_bucket,
                        Key=target_name,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": bucket, "Key": source_name},
                        CopySourceIfMatch=source_etag,
                        CopySourceRange=f"bytes={offset}-{offset + length - 1}",
                    )
                except CLIENT_ERRORS as exc:
                    raise to_storage_error(exc, "UploadPartCopy", target_bucket, target_name) from exc
                parts.append(
                    {"ETag": response.get("CopyPartResult", {}).get("ETag", ""), "PartNumber": number}
                )
            return await self._complete(target_bucket, target_name, upload_id, parts, _Precondition()) or ""
        except BaseException:
            await asyncio.shield(self._abort(target_bucket, target_name, upload_id))
            raise

    async def delete(self, bucket: str, name: str) -> bool:
        # DeleteObject answers 204 whether or not the key existed: ask first.
        if await self._head_object(bucket, name) is None:
            return False
        await self._call(
            "DeleteObject", bucket, name, lambda: self._s3.delete_object(Bucket=bucket, Key=name)
        )
        return True

    # -- listing ----------------------------------------------------------------------------------

    async def _pages(
        self, bucket: str, prefix: str, start_after: str, delimiter: str | None
    ) -> AsyncIterator[Any]:
        """ListObjectsV2 pages (physical order), following continuation tokens."""
        request: ListObjectsV2RequestTypeDef = {"Bucket": bucket, "MaxKeys": self.list_page_size}
        if prefix:
            request["Prefix"] = prefix
        if delimiter:
            request["Delimiter"] = delimiter
        if start_after:
            # Safe in physical terms: a name's logical key never sorts after the name itself.
            request["StartAfter"] = start_after
        while True:
            page = await self._call(
                "ListObjectsV2", bucket, prefix, lambda: self._s3.list_objects_v2(**request)
            )
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request.pop("StartAfter", None)
            request["ContinuationToken"] = token

    async def _look_ahead(self, bucket: str, order: LogicalOrder) -> list[Entry]:
        """Settle the names holding a long run of entries back by asking for them directly."""
        for name in order.blocking_names():
            order.add_lookahead(name, await self.head(bucket, name))
        return order.ready()

    async def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        """Objects under ``prefix`` in logical order (see :meth:`Backend.list`).

        Entries are cheap: size, time and ETag of the stored object, ``record_loaded=False``.
        Only ``/`` is supported as delimiter, as on the filesystem backend.
        """
        if delimiter not in (None, "/"):
            raise ValueError(f"the S3 backend lists with delimiter '/' only, not {delimiter!r}")
        order = LogicalOrder(prefix, start_after, delimiter)
        async for page in self._pages(bucket, prefix, start_after, delimiter):
            entries: list[Entry] = [
                StoredObject(
                    name=item["Key"],
                    size=item.get("Size", 0),
                    modified=_as_utc(item.get("LastModified")),
                    etag=item.get("ETag"),
                    record_loaded=False,
                    version=item.get("ETag"),
                )
                for item in page.get("Contents", [])
            ]
            entries.extend(CommonPrefix(item["Prefix"]) for item in page.get("CommonPrefixes", []))
            entries.sort(key=lambda entry: raw_name(entry.name))
            for entry in entries:
                order.add(entry)
            for ready in order.ready():
                yield ready
            if len(order) > self.list_buffer_limit:
                for ready in await self._look_ahead(bucket, order):
                    yield ready
        for ready in order.finish():
            yield ready
