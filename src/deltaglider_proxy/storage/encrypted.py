"""The encryption layer every backend is wrapped in (storage.md §11.4–§11.6).

Above this wrapper everything is plaintext: the engine hands it plaintext files and reads back
plaintext streams, and ``StoredObject.size`` is the size of the stored representation's
plaintext. Below it the backend only ever sees ``aes-256-gcm-chunked-v1`` ciphertext for
backends in ``aes256-gcm-proxy`` mode. Writes encrypt file to file in a worker thread into a
private work directory and hand the ciphertext file to the backend, so memory stays at a few
MiB whatever the object size. Reads decrypt frame by frame; a range decrypts only the frames it
covers. A backend that can pin an open object (the filesystem's ``open_pinned``) is read through
that one fd: record, header and frames from one inode, whole batches of frames read and
decrypted per thread call. The legacy single-shot format (``aes-256-gcm-v1``) is read-only: it
is authenticated into a private temp file before a byte of it is served.

The wrapper runs in every mode, also ``none``: marked objects are still decrypted (with a
legacy or previous key) or refused, and an unmarked body starting with the chunked magic is
refused rather than served as if it were plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from deltaglider_proxy.storage import encryption_format as ef
from deltaglider_proxy.storage.base import (
    Backend,
    BucketInfo,
    CommonPrefix,
    ObjectNotFound,
    SealedBody,
    StorageError,
    StoredObject,
)
from deltaglider_proxy.storage.encryption_io import (
    SealingWriter,
    batched,
    check_key,
    decrypt_frames,
    decrypt_single_shot_file,
    decrypt_single_shot_from,
    encrypt_file,
    pipelined,
    stream_to_file,
    unlink_all,
)
from deltaglider_proxy.storage.local_files import PinnedFile, stream_file
from deltaglider_proxy.storage.metadata import FileMetadata

log = logging.getLogger(__name__)

MARKERS = (ef.MARKER_KEY, ef.KEY_ID_KEY)
LEFTOVER_AGE_SECONDS = 3600


@dataclass(frozen=True)
class EncryptionPolicy:
    """What one backend's wrapper does: which keys it reads with, whether it encrypts writes."""

    ring: ef.KeyRing
    encrypt_writes: bool = False

    @property
    def backend_name(self) -> str:
        return self.ring.backend_name

    @property
    def write_key(self) -> tuple[bytes, str] | None:
        ring = self.ring
        if not self.encrypt_writes or ring.primary_key is None or ring.primary_key_id is None:
            return None
        return ring.primary_key, ring.primary_key_id


def markers_of(record: FileMetadata | None) -> tuple[str | None, str | None]:
    """(``dg-encrypted`` marker, stamped key id) of a stored record."""
    if record is None:
        return None, None
    meta = record.user_metadata
    return meta.get(ef.MARKER_KEY), meta.get(ef.KEY_ID_KEY)


def without_markers(record: FileMetadata) -> FileMetadata:
    """The record minus encryption markers: what the engine hands down describes plaintext,
    even when it was copied from the record of an encrypted object."""
    if not any(name in record.user_metadata for name in MARKERS):
        return record
    user = {k: v for k, v in record.user_metadata.items() if k not in MARKERS}
    return replace(record, user_metadata=user)


def stored_plaintext_size(record: FileMetadata) -> int:
    """Plaintext size of what is stored for ``record``: the delta for deltas, else the object."""
    if record.note == "delta" and record.delta_size is not None:
        return record.delta_size
    return record.file_size


# --- the wrapper -------------------------------------------------------------------------------


class EncryptedBackend:
    """A :class:`Backend` that seals what it writes and opens what it reads (module docstring).

    ``work_dir`` holds ciphertext on its way to the backend and legacy objects being
    authenticated; it is created with mode 0700 and should sit on the backend's filesystem for
    filesystem backends (the ciphertext file is then renamed into place, not copied).
    """

    def __init__(self, inner: Backend, policy: EncryptionPolicy, work_dir: Path) -> None:
        self.inner = inner
        self.policy = policy
        self.work_dir = work_dir

    @property
    def name(self) -> str:
        return self.policy.backend_name

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        def prepare() -> None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.work_dir, 0o700)
            # Leftovers of a crash: ciphertext never handed over, or plaintext of a legacy read.
            # Only old ones: a rotate-keys run may share this directory with a live server.
            cutoff = time.time() - LEFTOVER_AGE_SECONDS
            for leftover in self.work_dir.iterdir():
                with contextlib.suppress(OSError):
                    if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                        leftover.unlink()

        await asyncio.to_thread(prepare)
        await asyncio.to_thread(self._check_keys)
        start = getattr(self.inner, "start", None)
        if start is not None:
            await start()

    async def close(self) -> None:
        await self.inner.close()

    def _check_keys(self) -> None:
        """Refuse to start when a key id now names other key bytes than it did before here.

        The first start with a key id seals a known text under it in ``keycheck/``; later
        starts must open it. This catches an explicit ``key_id`` whose key was changed, which
        would otherwise only show as 500s on old objects (and new objects sealed under a key
        that shares their id). Ids are hashed into file names, so any id is a safe name.
        """
        ring = self.policy.ring
        pairs = [(ring.primary_key_id, ring.primary_key)]
        pairs += [(ring.legacy.key_id, ring.legacy.key)] if ring.legacy else []
        pairs += [(old.key_id, old.key) for old in ring.previous]
        checks = self.work_dir / "keycheck"
        checks.mkdir(mode=0o700, exist_ok=True)
        for key_id, key in pairs:
            if key_id is None or key is None:
                continue
            path = checks / hashlib.sha256(key_id.encode()).hexdigest()[:32]
            if not check_key(path, key):
                raise ef.EncryptionError(
                    f"backend {self.name!r}: the key configured for key id {key_id!r} is not the key "
                    f"this proxy used under that id before (checked against {path}); objects sealed "
                    "with the old key would not open — restore that key, or give the new key a new key_id"
                )

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (sweep_temp_files, check, root...) stay reachable; copy is
        # not among them (see EncryptedCopyingBackend), nor the raw stored bytes of
        # open_pinned / open_read (ciphertext, for callers that expect plaintext).
        if name in ("copy", "can_copy", "open_pinned", "open_read"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ buckets (bytes-free)

    async def list_buckets(self) -> list[BucketInfo]:
        return await self.inner.list_buckets()

    async def bucket_exists(self, bucket: str) -> bool:
        return await self.inner.bucket_exists(bucket)

    async def create_bucket(self, bucket: str) -> bool:
        return await self.inner.create_bucket(bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self.inner.delete_bucket(bucket)

    async def usage_bytes(self, bucket: str) -> int:
        return await self.inner.usage_bytes(bucket)  # stored (ciphertext) bytes: what costs money

    async def delete(self, bucket: str, name: str) -> bool:
        return await self.inner.delete(bucket, name)

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        return await self.inner.write_directory_marker(bucket, name)

    # ------------------------------------------------------------------ metadata

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        return _plaintext_view(await self.inner.head(bucket, name))

    async def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        async for entry in self.inner.list(bucket, prefix, start_after, delimiter):
            yield _plaintext(entry) if isinstance(entry, StoredObject) else entry

    # ------------------------------------------------------------------ write

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
        record = without_markers(record)
        write_key = self.policy.write_key
        if write_key is None:
            return await self.inner.write(
                bucket, name, source, record, move=move, if_absent=if_absent, if_match=if_match
            )
        key, key_id = write_key
        sealed = self._temp_path(".sealed")
        try:
            size = await asyncio.to_thread(encrypt_file, key, source, sealed)
            marked = _marked(record, key_id)
            stored = await self.inner.write(
                bucket, name, sealed, marked, move=True, if_absent=if_absent, if_match=if_match
            )
        finally:
            await asyncio.to_thread(sealed.unlink, True)
        if move:
            await asyncio.to_thread(source.unlink, True)
        return replace(stored, size=size)

    def sealing_writer(self, bucket: str, size: int) -> SealingWriter | None:
        """Where a body of ``size`` bytes can be encrypted while it arrives, for
        :meth:`write_sealed`; None when this backend stores plaintext."""
        write_key = self.policy.write_key
        if write_key is None:
            return None
        key, key_id = write_key
        return SealingWriter(self._temp_path(".sealed"), key, key_id, size)

    async def write_sealed(
        self, bucket: str, name: str, sealed: SealedBody, record: FileMetadata, *, if_absent: bool = False
    ) -> StoredObject:
        """Store what a :meth:`sealing_writer` of this backend sealed (consumed) as ``name``."""
        try:
            write_key = self.policy.write_key
            if (
                not isinstance(sealed, SealingWriter)
                or not sealed.finished
                or write_key is None
                or sealed.key_id != write_key[1]
                or sealed.path.parent != self.work_dir
            ):
                raise StorageError(f"{bucket}/{name}: the sealed body was not finished by this backend")
            marked = _marked(record, sealed.key_id)
            stored = await self.inner.write(bucket, name, sealed.path, marked, move=True, if_absent=if_absent)
        finally:
            await asyncio.to_thread(sealed.discard)
        return replace(stored, size=sealed.size)

    # ------------------------------------------------------------------ read

    async def read(
        self, bucket: str, name: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Plaintext bytes [start, end) of the object (see the module docstring)."""
        # The record decides how to read, so it is looked up fresh for every read: a cached one
        # could let an object replaced by its encrypted version be served as plaintext.
        pin = getattr(self.inner, "open_pinned", None)
        if pin is not None:
            # A local backend opens the object once for all of it: record, size, header and
            # frames come from one inode, so a concurrent replacement cannot pair one object's
            # record with another's bytes, and no second open (a third for ranges) is paid.
            pinned: PinnedFile = await pin(bucket, name, head_bytes=ef.HEADER_SIZE)
            try:
                async for chunk in self._read_stored(bucket, name, pinned.stored, start, end, pinned):
                    yield chunk
            finally:
                pinned.close()
            return
        # Where this backend writes plaintext, objects are expected unmarked: a backend that
        # answers a read with the record (S3's GetObject) is asked once, optimistically; only a
        # marked answer then costs the HEAD and the frame-exact reads. Where it encrypts, almost
        # every object is marked, so that guess would waste a GET: the HEAD comes first.
        opener = getattr(self.inner, "open_read", None)
        optimistic = self.policy.write_key is None and not (start > 0 and self.policy.ring.known_ids)
        if opener is not None and optimistic:
            record, body = await opener(bucket, name, start, end)
            try:
                if markers_of(record)[0] is None:
                    async for chunk in self._checked_unmarked(bucket, name, start, body):
                        yield chunk
                    return
            finally:
                body.close()
        stored = await self.inner.head(bucket, name)
        if stored is None:
            raise ObjectNotFound(name)
        async for chunk in self._read_stored(bucket, name, stored, start, end, None):
            yield chunk

    async def _read_stored(
        self,
        bucket: str,
        name: str,
        stored: StoredObject,
        start: int,
        end: int | None,
        pinned: PinnedFile | None,
    ) -> AsyncIterator[bytes]:
        """Read ``stored`` the way its markers say: through ``pinned`` when the object is open
        already, else through the backend."""
        marker, stamped = markers_of(stored.record)
        if marker is None:
            reader = self._read_unmarked(bucket, name, start, end, pinned)
        else:
            assert stored.record is not None
            key = self._key_for(bucket, name, stamped)
            if marker == ef.MARKER_CHUNKED:
                size = stored_plaintext_size(stored.record)
                reader = self._read_chunked(bucket, name, stored, key, stamped, size, start, end, pinned)
            elif marker == ef.MARKER_SINGLE_SHOT:
                reader = self._read_single_shot(bucket, name, key, stamped, start, end, pinned)
            else:
                self._fail(bucket, name, stamped, f"unknown dg-encrypted marker {marker!r}")
        async for chunk in reader:
            yield chunk

    def _key_for(self, bucket: str, name: str, stamped: str | None) -> bytes:
        try:
            return self.policy.ring.key_for(stamped)
        except ef.EncryptionKeyError as exc:
            self._fail(bucket, name, stamped, str(exc))

    def _fail(self, bucket: str, name: str, stamped: str | None, reason: str) -> NoReturn:
        """Log (with the key id, never key bytes) and raise; clients only see a 500."""
        log.error(
            "encrypted object %s/%s on backend %r (key id %s) cannot be served: %s",
            bucket,
            name,
            self.name,
            stamped or "(none stamped)",
            reason,
        )
        raise ef.EncryptionError(f"{bucket}/{name}: {reason}")

    async def _read_unmarked(
        self, bucket: str, name: str, start: int, end: int | None, pinned: PinnedFile | None
    ) -> AsyncIterator[bytes]:
        if start > 0 and self.policy.ring.known_ids:
            # Only a read from offset 0 sees the magic. Where keys are configured (so ciphertext
            # of ours may be here) a range also checks the first bytes; elsewhere that extra
            # request per range is not worth it (upstream checks no ranges at all).
            if pinned is not None:
                head = pinned.head
            else:
                head = b"".join([c async for c in self.inner.read(bucket, name, 0, len(ef.MAGIC))])
            self._refuse_magic(bucket, name, head)
        if pinned is not None:
            stream = self._checked_unmarked(bucket, name, start, pinned.stream(start, end), pinned.head)
        else:
            stream = self._checked_unmarked(bucket, name, start, self.inner.read(bucket, name, start, end))
        async for chunk in stream:
            yield chunk

    async def _checked_unmarked(
        self, bucket: str, name: str, start: int, stream: AsyncIterator[bytes], head: bytes | None = None
    ) -> AsyncIterator[bytes]:
        """``stream`` (bytes from ``start`` of an unmarked object), refused if it starts with our
        magic; ``head`` holds the object's first bytes when the caller read them already."""
        first = start == 0
        async for chunk in stream:
            if first:
                first = False
                if head is None:
                    head = chunk
                    if len(head) < len(ef.MAGIC):  # a short first chunk (or range): look further
                        rest = self.inner.read(bucket, name, len(head), len(ef.MAGIC))
                        head += b"".join([c async for c in rest])
                self._refuse_magic(bucket, name, head)
            yield chunk

    def _refuse_magic(self, bucket: str, name: str, head: bytes) -> None:
        try:
            ef.refuse_unmarked_ciphertext(head)
        except ef.UnmarkedCiphertext as exc:
            self._fail(bucket, name, None, str(exc))

    async def _read_chunked(
        self,
        bucket: str,
        name: str,
        stored: StoredObject,
        key: bytes,
        stamped: str | None,
        size: int,
        start: int,
        end: int | None,
        pinned: PinnedFile | None,
    ) -> AsyncIterator[bytes]:
        end = size if end is None else min(end, size)
        start = max(start, 0)
        wire = ef.chunked_wire_size(size)
        if stored.size != wire:
            self._fail(
                bucket,
                name,
                stamped,
                f"stored size {stored.size} is not the {wire} bytes a {size}-byte plaintext encrypts to "
                "(truncated, or the record was edited)",
            )
        whole = start == 0 and end == size
        if not whole and start >= end:
            return
        try:
            if pinned is not None:
                reader = _chunked_from_pinned(pinned, key, size, start, end, whole)
            else:
                reader = self._chunked_from_stream(bucket, name, key, size, start, end, whole)
            async for plain in reader:
                yield plain
        except ef.EncryptionError as exc:
            self._fail(bucket, name, stamped, str(exc))

    async def _chunked_from_stream(
        self, bucket: str, name: str, key: bytes, size: int, start: int, end: int, whole: bool
    ) -> AsyncIterator[bytes]:
        """Plaintext [start, end) of a chunked object, decrypted from the backend's byte stream."""
        if whole:
            decryptor: Any = ef.ChunkedDecryptor(key, size)
            source = self.inner.read(bucket, name)
        else:
            plan = ef.plan_range(size, start, end)
            header = b"".join([c async for c in self.inner.read(bucket, name, 0, ef.HEADER_SIZE)])
            decryptor = ef.ChunkedRangeDecryptor(key, size, header, plan)
            source = self.inner.read(bucket, name, plan.wire_start, plan.wire_end)
        async for plain in pipelined(batched(source), decryptor.update):
            yield plain
        decryptor.finish()

    async def _read_single_shot(
        self,
        bucket: str,
        name: str,
        key: bytes,
        stamped: str | None,
        start: int,
        end: int | None,
        pinned: PinnedFile | None,
    ) -> AsyncIterator[bytes]:
        opened = self._temp_path(".plain")
        try:
            try:
                await self._unseal_single_shot(bucket, name, key, opened, pinned)
            except ef.EncryptionError as exc:
                self._fail(bucket, name, stamped, str(exc))
            async for chunk in stream_file(opened, max(start, 0), end):
                yield chunk
        finally:
            await asyncio.to_thread(unlink_all, opened)

    async def _unseal_single_shot(
        self, bucket: str, name: str, key: bytes, target: Path, pinned: PinnedFile | None
    ) -> None:
        """Authenticate the whole single-shot object into ``target`` before a byte is served."""
        if pinned is not None:
            # Straight from the open fd: no sealed copy of the object on local disk.
            await pinned.run(decrypt_single_shot_from, key, pinned.size, target)
            return
        sealed = self._temp_path(".legacy")
        try:
            await stream_to_file(self.inner.read(bucket, name), sealed)
            await asyncio.to_thread(decrypt_single_shot_file, key, sealed, target)
        finally:
            await asyncio.to_thread(sealed.unlink, True)

    def _temp_path(self, suffix: str) -> Path:
        return self.work_dir / f".dg.crypt.{secrets.token_hex(8)}{suffix}"


class EncryptedCopyingBackend(EncryptedBackend):
    """The wrapper of a backend that copies server-side (S3).

    A copy moves the stored bytes as they are only when they are already what a write would
    store (ciphertext under the active key, or plaintext when writes are not encrypted);
    otherwise the object is decrypted and written again, so copying an object onto itself is
    also a way to re-encrypt it (storage.md §11.7).
    """

    def can_copy(self, src_bucket: str, dst_bucket: str) -> bool:
        return True

    async def copy(
        self, bucket: str, source_name: str, target_bucket: str, target_name: str, record: FileMetadata
    ) -> StoredObject:
        copier: Callable[..., Any] = self.inner.copy  # type: ignore[attr-defined]
        source = await self.inner.head(bucket, source_name)
        if source is None:
            raise ObjectNotFound(source_name)
        record = without_markers(record)
        marker, stamped = markers_of(source.record)
        write_key = self.policy.write_key
        if marker is None and write_key is None:
            stored: StoredObject = await copier(bucket, source_name, target_bucket, target_name, record)
            return stored
        if marker is not None and write_key is not None and stamped == write_key[1]:
            marked = _marked(record, write_key[1], marker)
            stored = await copier(bucket, source_name, target_bucket, target_name, marked)
            return _plaintext(stored)
        plain = self._temp_path(".copy")
        try:
            await stream_to_file(self.read(bucket, source_name), plain)
            return await self.write(target_bucket, target_name, plain, record, move=True)
        finally:
            await asyncio.to_thread(plain.unlink, True)


def wrap(inner: Backend, policy: EncryptionPolicy, work_dir: Path) -> EncryptedBackend:
    """The encryption wrapper for ``inner``, able to copy server-side when ``inner`` is."""
    if callable(getattr(inner, "copy", None)):
        return EncryptedCopyingBackend(inner, policy, work_dir)
    return EncryptedBackend(inner, policy, work_dir)


# --- helpers -----------------------------------------------------------------------------------


def _marked(record: FileMetadata, key_id: str, marker: str = ef.MARKER_CHUNKED) -> FileMetadata:
    """``record`` as stored for an object in format ``marker`` sealed with ``key_id``."""
    user = {**record.user_metadata, ef.MARKER_KEY: marker, ef.KEY_ID_KEY: key_id}
    return replace(record, user_metadata=user)


def _chunked_from_pinned(
    pinned: PinnedFile, key: bytes, size: int, start: int, end: int, whole: bool
) -> AsyncIterator[bytes]:
    """Plaintext [start, end) of the chunked object open in ``pinned``: only the frames the
    range covers are read and decrypted, batch by batch (:func:`decrypt_frames`)."""
    frames = ef.FrameRunDecryptor(key, size, pinned.head)
    if whole:
        return decrypt_frames(pinned, frames, 0, frames.final_index)
    plan = ef.plan_range(size, start, end)
    return decrypt_frames(pinned, frames, plan.first_chunk_index, plan.last_chunk_index, ef.RangeTrim(plan))


def _plaintext_view(stored: StoredObject | None) -> StoredObject | None:
    return None if stored is None else _plaintext(stored)


def _plaintext(stored: StoredObject) -> StoredObject:
    """``stored`` with its size as the plaintext size, when it is an encrypted object."""
    if stored.record is None:
        return stored
    marker, _ = markers_of(stored.record)
    if marker is None:
        return stored
    return replace(stored, size=stored_plaintext_size(stored.record))
