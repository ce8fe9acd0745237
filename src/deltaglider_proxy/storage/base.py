"""The physical storage interface every backend implements.

A backend stores *backend objects* inside buckets. A backend object name is the layout name of
storage.md §1.3 relative to the bucket: ``releases/reference.bin``, ``releases/v1.zip.delta``,
``releases/readme.txt`` (root deltaspace: no prefix). Backends know bytes and the metadata record;
they know nothing of S3 requests or of deltas.

Errors are the store's own (:class:`StorageError` and subclasses); the edge maps them to S3
errors once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, FileMetadata


class StorageError(Exception):
    """A backend failure that is not one of the specific cases below (maps to InternalError)."""


class ObjectNotFound(StorageError):
    pass


class BucketNotFound(StorageError):
    pass


class BucketNotEmpty(StorageError):
    pass


class ObjectExists(StorageError):
    """A create-only write found the object already there."""


class ObjectChanged(StorageError):
    """A write meant to replace one version found another there (or none)."""


class BucketAlreadyExists(StorageError):
    pass


class DiskFull(StorageError):
    pass


class InvalidObjectName(StorageError):
    """A name the backend cannot represent safely (never reaches the disk)."""


class BackendUnavailable(StorageError):
    """The backend could not be reached (maps to 503 ServiceUnavailable)."""


@dataclass(frozen=True)
class BucketInfo:
    name: str
    created: datetime


@dataclass(frozen=True)
class StoredObject:
    """What a backend knows about one backend object.

    ``record`` is the parsed DeltaGlider record, or None for an unmanaged object (written
    out-of-band). ``record_loaded`` is False for cheap listing entries whose metadata has not
    been read yet (call :meth:`Backend.head` to load it).
    """

    name: str
    size: int
    modified: datetime
    record: FileMetadata | None = None
    etag: str | None = None
    content_type: str | None = None
    record_loaded: bool = True
    # An opaque token naming exactly this stored version (the S3 ETag; inode and mtime on the
    # filesystem), for ``write(if_match=...)``; None where the backend cannot tell.
    version: str | None = None


@dataclass(frozen=True)
class CommonPrefix:
    """A rolled-up name ending in the delimiter, produced by delimited listings."""

    name: str


def logical_sort_key(name: str) -> bytes:
    """Sort key of a backend object name in user-key order.

    ``x.delta`` is presented to users as ``x``, so listings order it by its logical name;
    UTF-8 byte order is S3's listing order.
    """
    if name.endswith(DELTA_SUFFIX):
        name = name[: -len(DELTA_SUFFIX)]
    return name.encode("utf-8", "surrogatepass")


class SealedBody(Protocol):
    """A body a backend turns into what it stores (ciphertext) while the body arrives.

    Offered by backends that encrypt (``sealing_writer(bucket, size)``) and handed back to their
    ``write_sealed``; the plaintext then never has to be written to local disk first. The calls
    are blocking (worker threads), made one at a time and in order: ``update`` with exactly
    ``size`` bytes in all, then ``finish``. ``discard`` may come at any point, from any thread.
    """

    size: int

    def update(self, data: bytes, /) -> None: ...

    def finish(self) -> None: ...

    def discard(self) -> None: ...


class Backend(Protocol):
    """Physical object store. All methods are coroutines and never block the event loop."""

    async def list_buckets(self) -> list[BucketInfo]: ...

    async def bucket_exists(self, bucket: str) -> bool: ...

    async def create_bucket(self, bucket: str) -> bool:
        """Create the bucket; False when it already existed."""
        ...

    async def delete_bucket(self, bucket: str) -> None:
        """Remove an empty bucket (BucketNotEmpty / BucketNotFound otherwise)."""
        ...

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        """The object's info and record, or None when absent. Raises BucketNotFound."""
        ...

    def read(self, bucket: str, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of the object (end None = to the end). ObjectNotFound if absent."""
        ...

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
        """Atomically make ``source``'s bytes the object ``name`` with ``record``.

        Readers see either the old object or the complete new one, never a torn one. With
        ``move=True`` the backend may take ownership of ``source`` (rename it into place);
        the caller must not use it afterwards. ``if_absent=True`` makes the write create-only:
        :class:`ObjectExists` if the object is there (the guard for ``reference.bin``).
        ``if_match`` (a :attr:`StoredObject.version`) makes it replace only that version:
        :class:`ObjectChanged` if another one (or none) is there — rewriting an object in place
        (key rotation) then never undoes a client's concurrent write or delete.
        """
        ...

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        """Persist a zero-byte directory marker (``name`` ends with ``/``)."""
        ...

    async def delete(self, bucket: str, name: str) -> bool:
        """Remove the object; False when it was already absent."""
        ...

    def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        """Objects whose name starts with ``prefix``, in :func:`logical_sort_key` order.

        Only entries whose logical key sorts after ``start_after`` are produced. With
        ``delimiter`` set to ``/``, names with a further ``/`` after the prefix are rolled up
        into one :class:`CommonPrefix`. Entries may have ``record_loaded=False``.
        """
        ...

    async def usage_bytes(self, bucket: str) -> int:
        """Stored bytes of the bucket (quota accounting)."""
        ...

    async def close(self) -> None: ...
