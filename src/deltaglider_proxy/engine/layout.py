"""Layout access: backend objects addressed by their stored names, bypassing the delta engine.

A proxy whose S3 backend is another instance of this proxy writes the DeltaGlider layout into
it — ``<prefix>/reference.bin``, ``<prefix>/<name>.delta``, passthrough objects and ``dir/``
markers, each with its ``x-amz-meta-dg-*`` record (storage.md §1.5.2) — and must read back
exactly what it wrote. The inner proxy serves such requests here: names are taken verbatim
(reserved names included), bytes are stored and returned as they are, and the record travels
in its S3 form. Nothing is delta-encoded or reconstructed on this path.

It still goes through the engine rather than the edge touching backends: writes take the
deltaspace lock the delta engine takes, and replacing a ``reference.bin`` evicts the reference
cache, so the inner proxy's own logical view of the same bucket stays coherent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from deltaglider_proxy.engine.keys import check_layout_name, check_list_prefix
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.physical_order import PhysicalOrder, logical_start_after
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.spool import SpooledFile
from deltaglider_proxy.storage.base import Backend, BucketNotFound, CommonPrefix, StoredObject
from deltaglider_proxy.storage.metadata import (
    REFERENCE_NAME,
    FileMetadata,
    from_s3_metadata,
    read_s3_metadata,
    to_s3_metadata,
)

DIRECTORY_CONTENT_TYPE = "application/x-directory"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
# In a record's user_metadata: how a layout write's metadata differs from the record's own
# serialisation (see LayoutAccess.parse_record). "dg-" names are never shown to S3 clients.
VERBATIM_KEY = "dg-layout-verbatim"
# Listing pages load records (for ETags) with this many backend HEADs in flight.
HEAD_CONCURRENCY = 32


class LayoutRecordMissing(Exception):
    """A layout write without a DeltaGlider metadata record (maps to 400 InvalidArgument)."""

    def __init__(self) -> None:
        super().__init__("layout writes need a DeltaGlider metadata record")


@dataclass(frozen=True)
class LayoutObject:
    """One backend object as a raw (layout) client sees it."""

    key: str  # the backend object name, e.g. "releases/v2.zip.delta"
    size: int  # stored bytes
    etag: str  # quoted
    last_modified: datetime
    record: FileMetadata | None = None
    directory: bool = False

    @property
    def content_type(self) -> str:
        return DIRECTORY_CONTENT_TYPE if self.directory else "application/octet-stream"

    @property
    def metadata(self) -> dict[str, str]:
        """The record in its S3 user-metadata form (names without ``x-amz-meta-``): exactly
        what a layout write sent, or the engine's own serialisation of its record."""
        if self.record is None or self.directory:
            return {}
        user = dict(self.record.user_metadata)
        verbatim = user.pop(VERBATIM_KEY, None)
        meta = to_s3_metadata(self.record.with_changes(user_metadata=user), prefix=_deltaspace(self.key))
        if verbatim is not None:
            difference = json.loads(verbatim)
            for name in difference.get("drop", []):
                meta.pop(name, None)
            meta.update(difference.get("set", {}))
        return meta


@dataclass(frozen=True)
class LayoutPage:
    objects: list[LayoutObject]
    common_prefixes: list[str]
    is_truncated: bool
    next_cursor: str | None


def _deltaspace(name: str) -> str:
    return name.rpartition("/")[0]


def _is_reference(name: str) -> bool:
    return name.rsplit("/", 1)[-1] == REFERENCE_NAME


def _is_marker(stored: StoredObject) -> bool:
    # The filesystem backend keeps a marker with a synthetic record that names no object.
    record = stored.record
    return (
        stored.name.endswith("/")
        and stored.size == 0
        and (record is None or (not record.original_name and record.content_type == DIRECTORY_CONTENT_TYPE))
    )


def _etag(stored: StoredObject) -> str:
    """The ETag of the stored bytes, as far as it is known without reading them.

    A passthrough or reference record's MD5 is that of the stored bytes. A delta record's MD5
    describes the reconstructed object, not the patch, so a delta gets the backend's own ETag
    when it has one of its own, else a token that changes with the object; the ``-1`` suffix
    marks it as "not an MD5" to clients that would otherwise verify downloads against it.
    """
    record = stored.record
    if _is_marker(stored):
        return f'"{EMPTY_MD5}"'
    if record is not None and record.note != "delta" and record.md5:
        return f'"{record.md5}"'
    own = stored.etag.strip('"') if stored.etag else ""
    if own and (record is None or own != record.etag.strip('"')):
        return f'"{own}"'
    seed = f"{stored.name}\0{stored.size}\0{stored.modified.timestamp()!r}".encode()
    return f'"{hashlib.md5(seed, usedforsecurity=False).hexdigest()}-1"'


def _view(stored: StoredObject) -> LayoutObject:
    marker = _is_marker(stored)
    return LayoutObject(
        key=stored.name,
        size=stored.size,
        etag=_etag(stored),
        last_modified=stored.modified,
        record=None if marker else stored.record,
        directory=marker,
    )


class LayoutAccess:
    def __init__(
        self,
        backend: Backend,
        *,
        references: ReferenceCache,
        locks: DeltaspaceLocks,
    ) -> None:
        self.backend = backend
        self.references = references
        self.locks = locks

    @staticmethod
    def parse_record(name: str, metadata: Mapping[str, str]) -> FileMetadata | None:
        """The record carried by the S3 user metadata (names without ``x-amz-meta-``) of a
        layout write to ``name``; None if there is no valid one.

        S3 returns user metadata exactly as written, and the writer may rely on it (a chained
        proxy compares it to tell its own retried create-only write from someone else's; the
        ``deltaglider`` CLI writes fields the record has no place for). Where the record's own
        serialisation would differ, the difference is kept in the record, under a ``dg-`` name
        that the logical view never shows, so :attr:`LayoutObject.metadata` gives back the
        original."""
        meta = {key.lower(): value for key, value in metadata.items()}
        # The record holds decoded values; the verbatim difference below keeps the encoded ones.
        record = from_s3_metadata(read_s3_metadata(meta))
        if record is None and meta.get("dg-original-name") == "" and meta.get("dg-tool"):
            # A key ending in "/" has an empty filename, which from_s3_metadata takes for a
            # missing one: parse with a stand-in and put the empty name back.
            record = from_s3_metadata({**read_s3_metadata(meta), "dg-original-name": "-"})
            record = record.with_changes(original_name="") if record is not None else None
        if record is None:
            return None
        regenerated = to_s3_metadata(record, prefix=_deltaspace(name))
        difference = {
            "set": {key: value for key, value in meta.items() if regenerated.get(key) != value},
            "drop": sorted(key for key in regenerated if key not in meta),
        }
        if not difference["set"] and not difference["drop"]:
            return record
        user = {**record.user_metadata, VERBATIM_KEY: json.dumps(difference, separators=(",", ":"))}
        return record.with_changes(user_metadata=user)

    # ------------------------------------------------------------------ read side

    async def find(self, bucket: str, name: str) -> LayoutObject | None:
        """The stored object ``name``, or None. Raises BucketNotFound."""
        check_layout_name(name)
        stored = await self.backend.head(bucket, name)
        return None if stored is None else _view(stored)

    def open(self, bucket: str, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream stored bytes [start, end) of ``name`` (ObjectNotFound once iterated if absent)."""
        check_layout_name(name)
        return self.backend.read(bucket, name, start, end)

    # ------------------------------------------------------------------ write side

    async def write(
        self, bucket: str, name: str, body: SpooledFile, record: FileMetadata, *, if_absent: bool = False
    ) -> LayoutObject:
        """Store ``body`` (consumed) verbatim as ``name`` with ``record``; ``if_absent`` makes
        the write create-only (ObjectExists when ``name`` is there)."""
        try:
            check_layout_name(name)
            async with self.locks.hold(bucket, _deltaspace(name)):
                stored = await self.backend.write(
                    bucket, name, body.path, record, move=True, if_absent=if_absent
                )
            if _is_reference(name):
                self.references.evict(bucket, _deltaspace(name))
            return _view(stored)
        finally:
            body.discard()

    async def write_directory_marker(self, bucket: str, name: str) -> LayoutObject:
        check_layout_name(name)
        return _view(await self.backend.write_directory_marker(bucket, name))

    async def delete(self, bucket: str, name: str) -> bool:
        """Remove the stored object; False when it was not there. Unlike a logical delete, an
        emptied deltaspace keeps its reference: the writer manages its own layout."""
        check_layout_name(name)
        async with self.locks.hold(bucket, _deltaspace(name)):
            removed = await self.backend.delete(bucket, name)
        if _is_reference(name):
            self.references.evict(bucket, _deltaspace(name))
        return removed

    # ------------------------------------------------------------------ listing

    async def list_page(
        self, bucket: str, prefix: str, delimiter: str | None, cursor: str, max_keys: int
    ) -> LayoutPage:
        """One page of stored names after ``cursor`` in S3's byte order (see physical_order)."""
        check_list_prefix(prefix)
        if not await self.backend.bucket_exists(bucket):
            raise BucketNotFound(bucket)
        if max_keys <= 0:
            return LayoutPage([], [], False, None)
        native = delimiter == "/"  # every backend rolls up at "/"; other delimiters are ours
        order = PhysicalOrder(prefix, cursor, None if native else delimiter)
        listing = self.backend.list(bucket, prefix, logical_start_after(cursor), "/" if native else None)
        exhausted = True
        async for entry in listing:
            order.add(entry)
            if len(order.released) > max_keys:
                exhausted = False
                break
        if exhausted:
            order.finish()
        else:
            await _close(listing)
        chosen = order.released[:max_keys]
        truncated = len(order.released) > max_keys
        loaded = await self._load_records([e for e in chosen if isinstance(e, StoredObject)], bucket)
        objects = [_view(loaded[e.name]) for e in chosen if isinstance(e, StoredObject)]
        prefixes = [e.name for e in chosen if isinstance(e, CommonPrefix)]
        return LayoutPage(objects, prefixes, truncated, chosen[-1].name if truncated else None)

    async def _load_records(self, entries: list[StoredObject], bucket: str) -> dict[str, StoredObject]:
        """Listing entries with their records (the ETag depends on them); an entry deleted
        since it was listed keeps what the listing said."""
        gate = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def load(entry: StoredObject) -> StoredObject:
            if entry.record_loaded:
                return entry
            async with gate:
                return await self.backend.head(bucket, entry.name) or entry

        loaded = await asyncio.gather(*(load(e) for e in entries))
        return {entry.name: entry for entry in loaded}


async def _close(listing: AsyncIterator[StoredObject | CommonPrefix]) -> None:
    closer = getattr(listing, "aclose", None)
    if closer is not None:
        await closer()
