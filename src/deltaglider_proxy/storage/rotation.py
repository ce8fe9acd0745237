"""Re-encrypt stored objects under a backend's active key, in place (storage.md §11.7).

Each object is decrypted (with whichever configured key its stamped id names) into a private
temp file, checked against its record, and written back through the wrapper — one atomic
backend write per object, so a reader sees the old ciphertext or the new one, never a mix.
Records (sizes, hashes, created_at, user metadata) are kept as they are: clients see no change.

Rotation is resumable by construction: objects already stamped with the active key id are
skipped, so an interrupted run is simply started again. Each write replaces only the version that
was read (``if_match``), so a client's concurrent overwrite or delete is never undone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deltaglider_proxy.storage.base import ObjectChanged, StorageError, StoredObject
from deltaglider_proxy.storage.encrypted import (
    EncryptedBackend,
    markers_of,
    stored_plaintext_size,
)
from deltaglider_proxy.storage.encryption_format import MARKER_CHUNKED

log = logging.getLogger(__name__)

Outcome = str  # "rotated", "current", "plaintext", "unmanaged", "changed", "failed"


@dataclass
class RotationReport:
    counts: dict[Outcome, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class RotationUnavailable(StorageError):
    """The backend has no active key to rotate to."""


async def stored_names(backend: EncryptedBackend, bucket: str) -> list[str]:
    """Every stored object of ``bucket`` (references and deltas included)."""
    return [entry.name async for entry in backend.inner.list(bucket) if isinstance(entry, StoredObject)]


async def rotate_object(
    backend: EncryptedBackend,
    bucket: str,
    name: str,
    *,
    include_plaintext: bool = False,
    dry_run: bool = False,
) -> Outcome:
    """Bring one stored object under the active key; returns what was done."""
    write_key = backend.policy.write_key
    if write_key is None:
        raise RotationUnavailable(
            f"backend {backend.name!r} has no active key (mode aes256-gcm-proxy with a key is needed)"
        )
    before = await backend.inner.head(bucket, name)
    if before is None or before.record is None:
        return "unmanaged"  # directory markers, out-of-band objects, or gone since listed
    marker, stamped = markers_of(before.record)
    if marker == MARKER_CHUNKED and stamped == write_key[1]:
        return "current"
    if marker is None and not include_plaintext:
        return "plaintext"
    if dry_run:
        return "rotated"
    temp = backend.work_dir / f".dg.rotate.{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    try:
        size, sha256 = await _copy_out(backend, bucket, name, temp)
        record = before.record
        if size != stored_plaintext_size(record) or (record.note != "delta" and sha256 != record.file_sha256):
            raise StorageError(f"{bucket}/{name}: decrypted bytes do not match the record; left as it is")
        # Rewritten or deleted by a client meanwhile: that write already used the active key. The
        # write itself replaces only the version read (checked by the backend, atomically), so a
        # client write landing after this check is not undone either.
        now = await backend.inner.head(bucket, name)
        if now is None or now.etag != before.etag or now.modified != before.modified or now.record != record:
            return "changed"
        try:
            await backend.write(bucket, name, temp, record, move=True, if_match=before.version)
        except ObjectChanged:
            return "changed"
    finally:
        await asyncio.to_thread(temp.unlink, True)
    return "rotated"


async def _copy_out(backend: EncryptedBackend, bucket: str, name: str, path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with await asyncio.to_thread(open, path, "xb") as handle:
        async for chunk in backend.read(bucket, name):
            size += len(chunk)
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(handle.flush)
    return size, digest.hexdigest()


async def rotate_bucket(
    backend: EncryptedBackend,
    bucket: str,
    names: list[str],
    *,
    include_plaintext: bool = False,
    dry_run: bool = False,
    progress: Callable[[str, Outcome], None] = lambda _name, _outcome: None,
) -> RotationReport:
    """Rotate ``names`` of ``bucket`` one by one; a failure is reported and the run goes on."""
    report = RotationReport()
    for name in names:
        try:
            outcome = await rotate_object(
                backend, bucket, name, include_plaintext=include_plaintext, dry_run=dry_run
            )
        except RotationUnavailable:
            raise
        except StorageError as exc:
            log.error("rotation of %s/%s failed: %s", bucket, name, exc)
            report.failures.append((name, str(exc)))
            outcome = "failed"
        report.add(outcome)
        progress(name, outcome)
    return report
