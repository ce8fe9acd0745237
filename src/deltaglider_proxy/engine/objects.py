"""Logical objects over physical backend objects: the engine's public API.

The edge (``s3api``) calls only this module (and ``multipart``): it speaks in user keys and
spooled files; underneath, a user key is stored as a passthrough object, or — once the delta
codec is wired in — as a delta against its deltaspace's ``reference.bin``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, cast

from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.eligibility import CompressionPolicies
from deltaglider_proxy.engine.keys import ObjectKey, check_list_prefix, parse_key
from deltaglider_proxy.engine.layout import LayoutAccess
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.retrieve import DecodedFile, DeltaRetriever, IntegrityError
from deltaglider_proxy.engine.spool import Spool, SpooledFile
from deltaglider_proxy.engine.store import DeltaStore, StoreResult
from deltaglider_proxy.storage.base import (
    Backend,
    BucketInfo,
    BucketNotFound,
    CommonPrefix,
    ObjectNotFound,
    SealedBody,
    StoredObject,
    logical_sort_key,
)
from deltaglider_proxy.storage.local_files import stream_file
from deltaglider_proxy.storage.metadata import (
    DELTA_SUFFIX,
    REFERENCE_NAME,
    TOOL,
    FileMetadata,
    utcnow,
)

if TYPE_CHECKING:
    from deltaglider_proxy.engine.background import BackgroundEncoder

log = logging.getLogger(__name__)

StorageType = Literal["passthrough", "delta", "reference", "unmanaged", "directory"]
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class EntityTooLarge(Exception):
    pass


class ObjectMissing(Exception):
    """The user key does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    """Everything the edge needs to answer HEAD/GET/LIST for one user key."""

    key: str
    size: int
    etag: str  # quoted
    last_modified: datetime
    storage_type: StorageType
    stored_size: int
    content_type: str | None = None
    user_metadata: Mapping[str, str] = field(default_factory=dict)
    stored_headers: Mapping[str, str] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
    record: FileMetadata | None = None


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_cursor: str | None


@dataclass(frozen=True)
class NewObject:
    """What a client asked to store besides the bytes."""

    content_type: str | None = None
    user_metadata: Mapping[str, str] = field(default_factory=dict)
    stored_headers: Mapping[str, str] = field(default_factory=dict)
    checksums: Mapping[str, str] = field(default_factory=dict)
    multipart_etag: str | None = None


def _info_from_stored(key: str, stored: StoredObject) -> ObjectInfo:
    record = stored.record
    if record is None:
        etag = stored.etag.strip('"') if stored.etag else ""
        return ObjectInfo(
            key=key,
            size=stored.size,
            etag=f'"{etag}"',
            last_modified=stored.modified,
            storage_type="unmanaged",
            stored_size=stored.size,
            content_type=stored.content_type,
        )
    from deltaglider_proxy.storage.metadata import client_metadata, stored_headers

    etag = record.etag
    if etag == '""' and stored.etag:
        etag = '"' + stored.etag.strip('"') + '"'
    return ObjectInfo(
        key=key,
        size=record.file_size,
        etag=etag,
        last_modified=record.created_at,
        storage_type=record.note,
        stored_size=stored.size,
        content_type=record.content_type,
        user_metadata=client_metadata(record),
        stored_headers=stored_headers(record),
        checksums=dict(record.checksums),
        record=record,
    )


def _newest(delta: StoredObject | None, plain: StoredObject | None) -> StoredObject | None:
    """Both variants present (crash window, external writes): newer created_at wins, tie → delta."""
    if delta is None or plain is None:
        return delta or plain

    def created(obj: StoredObject) -> datetime:
        return obj.record.created_at if obj.record is not None else obj.modified

    return delta if created(delta) >= created(plain) else plain


async def _primed(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``stream`` with its first chunk already read: a failure to open or decrypt the object
    then surfaces before the response starts (a clean error), not as a broken body."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None
    except BaseException:
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
        raise

    async def replay() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first
            async for chunk in stream:
                yield chunk
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

    return replay()


class ObjectEngine:
    def __init__(
        self,
        backend: Backend,
        spool: Spool,
        *,
        codec: Codec,
        references: ReferenceCache,
        policies: CompressionPolicies,
        max_object_size: int,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.max_object_size = max_object_size
        self.references = references
        self.locks = DeltaspaceLocks()
        self.deltas = DeltaStore(backend, spool, codec, references, policies, self.locks)
        self.retriever = DeltaRetriever(backend, spool, codec, references, self.deltas)
        # Stored objects by their backend names, for a proxy chained in front of this one.
        self.layout = LayoutAccess(backend, references=references, locks=self.locks)
        # Set by the application when delta encoding runs in the background.
        self.background: BackgroundEncoder | None = None
        # Outcome of every PUT by decision and reason, for metrics and the stats endpoint.
        self.decisions: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ buckets

    async def list_buckets(self) -> list[BucketInfo]:
        return sorted(await self.backend.list_buckets(), key=lambda b: b.name)

    async def bucket_exists(self, bucket: str) -> bool:
        return await self.backend.bucket_exists(bucket)

    async def require_bucket(self, bucket: str) -> None:
        if not await self.backend.bucket_exists(bucket):
            raise BucketNotFound(bucket)

    async def create_bucket(self, bucket: str) -> bool:
        return await self.backend.create_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self.backend.delete_bucket(bucket)

    # ------------------------------------------------------------------ read side

    async def _resolve(self, bucket: str, key: ObjectKey) -> StoredObject | None:
        delta, plain = await asyncio.gather(
            self.backend.head(bucket, key.delta_name), self.backend.head(bucket, key.passthrough_name)
        )
        return _newest(delta, plain)

    async def head(self, bucket: str, raw_key: str) -> ObjectInfo:
        key = parse_key(raw_key)
        stored = await self._resolve(bucket, key)
        if stored is None:
            if not await self.backend.bucket_exists(bucket):
                raise BucketNotFound(bucket)
            raise ObjectMissing(key.key)
        return _info_from_stored(key.key, stored)

    async def open(
        self,
        bucket: str,
        raw_key: str,
        start: int = 0,
        end: int | None = None,
        *,
        known: ObjectInfo | None = None,
    ) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's info and a stream of bytes [start, end) of its logical content.

        ``known`` is the caller's own fresh :meth:`head` of it (the GET that just evaluated its
        conditions), so the backend is not asked twice. A delta object is rebuilt and verified
        before this returns, so a failure is still an error response rather than a broken body."""
        info = known if known is not None else await self.head(bucket, raw_key)
        if info.storage_type == "delta" and info.record is not None:
            key = parse_key(raw_key)
            decoded = await self.retriever.rebuild(bucket, key, info.record)
            return info, self._stream_decoded(decoded, start, end)
        if info.storage_type == "reference":
            raise IntegrityError(f"{bucket}/{raw_key}: a reference record under a user key (legacy layout)")
        return info, await _primed(self._stream(bucket, info.key, start, end))

    async def _stream_decoded(
        self, decoded: DecodedFile, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream_file(decoded.path, start, end):
                yield chunk
        finally:
            decoded.discard()

    async def _stream(self, bucket: str, name: str, start: int, end: int | None) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.backend.read(bucket, name, start, end):
                yield chunk
        except ObjectNotFound:
            # Replaced or deleted between HEAD and read; the response is already under way.
            log.warning("object %s/%s vanished while being read", bucket, name)
            raise

    # ------------------------------------------------------------------ write side

    def _record(self, key: ObjectKey, body: SpooledFile, new: NewObject) -> FileMetadata:
        """The passthrough-shaped record of a new object; the store turns it into a delta's."""
        return FileMetadata(
            tool=TOOL,
            original_name=key.filename,
            file_sha256=body.sha256_hex,
            file_size=body.size,
            md5=body.md5_hex,
            created_at=utcnow(),
            note="passthrough",
            multipart_etag=new.multipart_etag,
            content_type=new.content_type,
            user_metadata={
                **new.user_metadata,
                **{"dg-h-" + k: v for k, v in new.stored_headers.items()},
            },
            checksums=dict(new.checksums),
        )

    def sealing_writer(self, bucket: str, size: int | None) -> SealedBody | None:
        """Where a body of ``size`` bytes for ``bucket`` should be spooled sealed, or None.

        Only where it will be stored as it is — compression off — on a backend that encrypts:
        the plaintext is then never needed, so the spool writes only the ciphertext instead of
        the plaintext and then, once more, the ciphertext.
        """
        if size is None or self.deltas.policies.for_bucket(bucket).enabled:
            return None
        offer = getattr(self.backend, "sealing_writer", None)
        return None if offer is None else cast("SealedBody | None", offer(bucket, size))

    async def put(self, bucket: str, raw_key: str, body: SpooledFile, new: NewObject) -> ObjectInfo:
        """Store ``body`` (consumed) as ``raw_key``. Atomic: readers see old or new, never partial."""
        try:
            key = parse_key(raw_key)
            if body.size > self.max_object_size:
                raise EntityTooLarge(f"{body.size} > max_object_size {self.max_object_size}")
            record = self._record(key, body, new)
            result = await self.deltas.put(bucket, key, body, record)
            self._count(result)
            return _info_from_stored(key.key, result.stored)
        finally:
            body.discard()

    async def copy_in_backend(
        self, source: ObjectInfo, src_bucket: str, dst_bucket: str, raw_key: str, new: NewObject
    ) -> ObjectInfo | None:
        """CopyObject without moving the bytes through the proxy, when that gives the same result.

        Only when the source is stored as-is and the target bucket stores everything as-is
        (compression off), and both live on one backend that copies server-side; otherwise None
        and the caller copies through the engine (re-encoding against the target deltaspace).
        """
        record = source.record
        if record is None or record.note != "passthrough":
            return None
        if self.deltas.policies.for_bucket(dst_bucket).enabled:
            return None
        copier = getattr(self.backend, "copy", None)
        if copier is None:
            return None
        can_copy = getattr(self.backend, "can_copy", None)
        if can_copy is not None and not can_copy(src_bucket, dst_bucket):
            return None
        key = parse_key(raw_key)
        target = FileMetadata(
            tool=TOOL,
            original_name=key.filename,
            file_sha256=record.file_sha256,
            file_size=record.file_size,
            md5=record.md5,
            created_at=utcnow(),
            note="passthrough",
            multipart_etag=record.multipart_etag,
            content_type=new.content_type,
            user_metadata={
                **new.user_metadata,
                **{"dg-h-" + k: v for k, v in new.stored_headers.items()},
            },
            checksums=dict(new.checksums),
        )
        source_name = parse_key(source.key).passthrough_name
        async with self.locks.hold(dst_bucket, key.prefix):
            await self.deltas.dependants.release(dst_bucket, key)
            stored: StoredObject = await copier(
                src_bucket, source_name, dst_bucket, key.passthrough_name, target
            )
            # The new variant is visible; only now drop the other kind (§2.6).
            await self.backend.delete(dst_bucket, key.delta_name)
        self._count(StoreResult(stored, "passthrough", "server-side-copy"))
        return _info_from_stored(key.key, stored)

    def _count(self, result: StoreResult) -> None:
        slot = (result.decision, result.reason)
        self.decisions[slot] = self.decisions.get(slot, 0) + 1
        log.debug("stored as %s (%s, ratio %s)", result.decision, result.reason, result.ratio)

    async def delete(self, bucket: str, raw_key: str) -> bool:
        key = parse_key(raw_key)
        async with self.locks.hold(bucket, key.prefix):
            # Deltas based on this one move onto its base first (chain strategy); only then it goes.
            await self.deltas.dependants.release(bucket, key)
            removed_delta = await self.backend.delete(bucket, key.delta_name)
            removed_plain = await self.backend.delete(bucket, key.passthrough_name)
            if removed_delta or removed_plain:
                await self._drop_orphan_reference(bucket, key)
        return removed_delta or removed_plain

    async def _drop_orphan_reference(self, bucket: str, key: ObjectKey) -> None:
        """An empty deltaspace loses its baseline (§5.2)."""
        scan_prefix = f"{key.prefix}/" if key.prefix else ""
        async for entry in self.backend.list(bucket, scan_prefix, delimiter="/"):
            name = entry.name
            if isinstance(entry, CommonPrefix) or name.rsplit("/", 1)[-1] != REFERENCE_NAME:
                return
        if await self.backend.delete(bucket, key.reference_name):
            self.references.evict(bucket, key.prefix)

    # ------------------------------------------------------------------ listing

    async def _logical_entries(
        self, bucket: str, prefix: str, delimiter: str | None, cursor: str
    ) -> AsyncIterator[ObjectInfo | str]:
        """User-visible entries in key order: ObjectInfo for objects, str for common prefixes."""
        native = delimiter == "/"
        pending: StoredObject | None = None
        pending_key = ""
        last_prefix: str | None = None
        async for entry in self.backend.list(bucket, prefix, cursor, "/" if native else None):
            if isinstance(entry, CommonPrefix):
                if pending is not None:
                    yield await self._materialise(bucket, pending_key, pending)
                    pending = None
                yield entry.name
                continue
            name = entry.name
            if name.rsplit("/", 1)[-1] == REFERENCE_NAME:
                continue
            logical = name[: -len(DELTA_SUFFIX)] if name.endswith(DELTA_SUFFIX) else name
            if not logical.startswith(prefix) or logical_sort_key(logical) <= logical_sort_key(cursor):
                continue
            if delimiter and not native:
                rest = logical[len(prefix) :]
                at = rest.find(delimiter)
                if at >= 0:
                    rolled = prefix + rest[: at + len(delimiter)]
                    if rolled != last_prefix and logical_sort_key(rolled) > logical_sort_key(cursor):
                        if pending is not None:
                            yield await self._materialise(bucket, pending_key, pending)
                            pending = None
                        last_prefix = rolled
                        yield rolled
                    continue
            if pending is not None and pending_key == logical:
                pending = await self._pick(bucket, pending, entry)
                continue
            if pending is not None:
                yield await self._materialise(bucket, pending_key, pending)
            pending, pending_key = entry, logical
        if pending is not None:
            yield await self._materialise(bucket, pending_key, pending)

    async def _loaded(self, bucket: str, entry: StoredObject) -> StoredObject:
        if entry.record_loaded:
            return entry
        loaded = await self.backend.head(bucket, entry.name)
        return loaded or entry

    async def _pick(self, bucket: str, a: StoredObject, b: StoredObject) -> StoredObject:
        a, b = await asyncio.gather(self._loaded(bucket, a), self._loaded(bucket, b))
        delta, plain = (a, b) if a.name.endswith(DELTA_SUFFIX) else (b, a)
        return _newest(delta, plain) or a

    async def _materialise(self, bucket: str, key: str, entry: StoredObject) -> ObjectInfo:
        return _info_from_stored(key, await self._loaded(bucket, entry))

    async def list(
        self, bucket: str, prefix: str, delimiter: str | None, cursor: str, max_keys: int
    ) -> ListPage:
        check_list_prefix(prefix)
        if not await self.backend.bucket_exists(bucket):
            raise BucketNotFound(bucket)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: str | None = None
        truncated = False
        if max_keys > 0:
            async for item in self._logical_entries(bucket, prefix, delimiter or None, cursor):
                if len(objects) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                if isinstance(item, str):
                    prefixes.append(item)
                    last = item
                else:
                    objects.append(item)
                    last = item.key
        return ListPage(objects, prefixes, truncated, last if truncated else None)

    async def is_empty(self, bucket: str) -> bool:
        page = await self.list(bucket, "", None, "", 1)
        return not page.objects and not page.common_prefixes
