"""The PUT path: decide passthrough or delta, seed references, encode, write (storage.md §2).

Everything that touches a deltaspace runs under its lock, so reference creation is race-free
inside the process; across processes the reference is written create-only, so a second writer
can never overwrite a baseline that deltas already point at. The ratio rule applies to every
PUT (the documented rule of §2.4): a delta that saves too little is not worth a decode on every
GET, and the object is stored passthrough instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.eligibility import (
    CompressionPolicies,
    CompressionPolicy,
    listed_extension,
    sniff_file,
)
from deltaglider_proxy.engine.keys import ObjectKey
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.references import Loader, ReferenceCache
from deltaglider_proxy.engine.similarity import WORTH_ENCODING, Sketch, containment, sketch_file
from deltaglider_proxy.engine.spool import Spool, SpooledFile
from deltaglider_proxy.engine.transfer import stream_to_file
from deltaglider_proxy.storage.base import Backend, ObjectExists, StoredObject
from deltaglider_proxy.storage.metadata import (
    DELTA_CMD_TEMPLATE,
    REFERENCE_NAME,
    REFERENCE_ORIGINAL_NAME,
    FileMetadata,
)

log = logging.getLogger(__name__)

Decision = Literal["delta", "passthrough"]
# Why an object ended up as it did; feeds logs and the decision metrics.
Reason = Literal[
    "compression-off",
    "not-a-candidate",
    "dissimilar",
    "ratio",
    "delta",
    "empty",
    "deferred",
    "superseded",
    "no-reference",
    "server-side-copy",
    "reference",  # the deltaspace's first object: it became the reference (stored as a self-delta)
]
SKETCH_CACHE_ENTRIES = 256


@dataclass(frozen=True)
class StoreResult:
    stored: StoredObject
    decision: Decision
    reason: Reason
    ratio: float | None = None


class Deferrer(Protocol):
    """Takes note of an object stored as-is that should be re-encoded later."""

    async def submit(self, bucket: str, key: str, record: FileMetadata) -> None: ...


def same_version(stored: StoredObject | None, record: FileMetadata) -> bool:
    """Whether ``stored`` is still the very object version ``record`` describes."""
    current = stored.record if stored is not None else None
    return (
        current is not None
        and current.file_sha256 == record.file_sha256
        and current.file_size == record.file_size
        and abs((current.created_at - record.created_at).total_seconds()) < 0.001
    )


class DeltaStore:
    def __init__(
        self,
        backend: Backend,
        spool: Spool,
        codec: Codec,
        references: ReferenceCache,
        policies: CompressionPolicies,
        locks: DeltaspaceLocks,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.codec = codec
        self.references = references
        self.policies = policies
        self.locks = locks
        self._sketches: OrderedDict[str, Sketch] = OrderedDict()
        # Set when delta encoding runs in the background (advanced.delta_encoding).
        self.deferrer: Deferrer | None = None
        # Lifetime counter read by the metrics exporter at scrape time: original minus delta size
        # of every delta committed against an existing reference (a new reference saves nothing).
        self.bytes_saved = 0

    # ------------------------------------------------------------------ reference access

    def loader(self, bucket: str, key: ObjectKey) -> Loader:
        """A cache loader that copies the deltaspace's reference from the backend."""

        async def load(path: Path) -> tuple[int, str]:
            return await stream_to_file(self.backend.read(bucket, key.reference_name), path)

        return load

    async def _reference_sketch(self, sha256: str, path: Path) -> Sketch:
        sketch = self._sketches.get(sha256)
        if sketch is None:
            sketch = await asyncio.to_thread(sketch_file, path)
            self._sketches[sha256] = sketch
            while len(self._sketches) > SKETCH_CACHE_ENTRIES:
                self._sketches.popitem(last=False)
        else:
            self._sketches.move_to_end(sha256)
        return sketch

    # ------------------------------------------------------------------ PUT

    async def put(self, bucket: str, key: ObjectKey, body: SpooledFile, record: FileMetadata) -> StoreResult:
        """Store ``body`` (the caller still owns and discards it) as ``key``."""
        policy = self.policies.for_bucket(bucket)
        async with self.locks.hold(bucket, key.prefix):
            if not policy.enabled:
                return await self._passthrough(bucket, key, body, record, "compression-off")
            if body.size == 0:
                return await self._passthrough(bucket, key, body, record, "empty")
            reference = await self.backend.head(bucket, key.reference_name)  # errors propagate
            minted = False
            if reference is None:
                if not listed_extension(key.filename) and not await asyncio.to_thread(sniff_file, body.path):
                    return await self._passthrough(bucket, key, body, record, "not-a-candidate")
                reference, minted = await self._mint_reference(bucket, key, body, record)
            if reference.record is None or reference.record.note != "reference":
                log.warning(
                    "%s/%s exists without a reference record; storing %s passthrough",
                    bucket,
                    key.reference_name,
                    key.key,
                )
                return await self._passthrough(bucket, key, body, record, "not-a-candidate")
            if not minted and self.deferrer is not None:
                result = await self._passthrough(bucket, key, body, record, "deferred")
                await self.deferrer.submit(bucket, key.key, record)
                return result
            try:
                return await self._encode_and_write(
                    bucket, key, body, record, reference.record, minted, policy
                )
            except BaseException:
                if minted:
                    await self._drop_reference(bucket, key)
                raise

    # ------------------------------------------------------------------ background conversion

    async def convert(self, bucket: str, key: ObjectKey, record: FileMetadata) -> Reason:
        """Re-encode an object stored as-is (the version ``record`` describes) as a delta.

        The expensive part runs without the deltaspace lock, so PUTs are not held up; the swap
        happens under the lock and only if neither the object nor the reference changed meanwhile.
        The object keeps its created_at (Last-Modified): it is the same version, stored smaller.
        """
        policy = self.policies.for_bucket(bucket)
        if not policy.enabled:
            return "compression-off"
        if not same_version(await self.backend.head(bucket, key.passthrough_name), record):
            return "superseded"
        reference = await self.backend.head(bucket, key.reference_name)
        if reference is None or reference.record is None or reference.record.note != "reference":
            return "no-reference"
        ref_record = reference.record
        copy = self.spool.new_path(".src")
        delta_path = self.spool.new_path(".delta")
        try:
            _, sha256 = await stream_to_file(self.backend.read(bucket, key.passthrough_name), copy)
            if sha256 != record.file_sha256:
                return "superseded"
            async with self.references.pinned(
                bucket, key.prefix, ref_record.file_sha256, self.loader(bucket, key)
            ) as ref_path:
                ref_sketch, body_sketch = await asyncio.gather(
                    self._reference_sketch(ref_record.file_sha256, ref_path),
                    asyncio.to_thread(sketch_file, copy),
                )
                if containment(ref_sketch, body_sketch) < WORTH_ENCODING:
                    return "dissimilar"
                delta_size = await self.codec.encode(ref_path, copy, delta_path)
            if record.file_size == 0 or delta_size / record.file_size >= policy.max_delta_ratio:
                return "ratio"
            async with self.locks.hold(bucket, key.prefix):
                current = await self.backend.head(bucket, key.passthrough_name)
                now_ref = await self.backend.head(bucket, key.reference_name)
                if not same_version(current, record) or now_ref is None or now_ref.record is None:
                    return "superseded"
                if now_ref.record.file_sha256 != ref_record.file_sha256:
                    return "superseded"
                assert current is not None and current.record is not None
                delta_record = current.record.with_changes(
                    note="delta",
                    ref_path=REFERENCE_NAME,
                    ref_sha256=ref_record.file_sha256,
                    delta_size=delta_size,
                    delta_cmd=DELTA_CMD_TEMPLATE.format(name=key.filename),
                )
                await self.backend.write(bucket, key.delta_name, delta_path, delta_record, move=True)
                self.bytes_saved += record.file_size - delta_size
                await self._delete_quietly(bucket, key.passthrough_name, key)
            return "delta"
        finally:
            await asyncio.to_thread(copy.unlink, True)
            await asyncio.to_thread(delta_path.unlink, True)

    async def _mint_reference(
        self, bucket: str, key: ObjectKey, body: SpooledFile, record: FileMetadata
    ) -> tuple[StoredObject, bool]:
        ref_record = record.with_changes(
            note="reference",
            original_name=REFERENCE_ORIGINAL_NAME,
            source_name=key.key,
            multipart_etag=None,
            user_metadata={},
            checksums={},
        )
        try:
            stored = await self.backend.write(
                bucket, key.reference_name, body.path, ref_record, if_absent=True
            )
        except ObjectExists:
            # Another proxy instance seeded this deltaspace first: use its baseline.
            existing = await self.backend.head(bucket, key.reference_name)
            if existing is None:
                raise
            return existing, False
        await self.references.adopt(bucket, key.prefix, body.sha256_hex, body.path)
        return stored, True

    async def _encode_and_write(
        self,
        bucket: str,
        key: ObjectKey,
        body: SpooledFile,
        record: FileMetadata,
        ref_record: FileMetadata,
        minted: bool,
        policy: CompressionPolicy,
    ) -> StoreResult:
        threshold = policy.max_delta_ratio
        delta_path = self.spool.new_path(".delta")
        try:
            async with self.references.pinned(
                bucket, key.prefix, ref_record.file_sha256, self.loader(bucket, key)
            ) as ref_path:
                if not minted:
                    ref_sketch, body_sketch = await asyncio.gather(
                        self._reference_sketch(ref_record.file_sha256, ref_path),
                        asyncio.to_thread(sketch_file, body.path),
                    )
                    if containment(ref_sketch, body_sketch) < WORTH_ENCODING:
                        return await self._passthrough(bucket, key, body, record, "dissimilar")
                delta_size = await self.codec.encode(ref_path, body.path, delta_path)
            ratio = delta_size / body.size
            if ratio >= threshold:
                if minted:
                    await self._drop_reference(bucket, key)
                return await self._passthrough(bucket, key, body, record, "ratio", ratio)
            delta_record = record.with_changes(
                note="delta",
                ref_path=REFERENCE_NAME,
                ref_sha256=ref_record.file_sha256,
                delta_size=delta_size,
                delta_cmd=DELTA_CMD_TEMPLATE.format(name=key.filename),
            )
            stored = await self.backend.write(bucket, key.delta_name, delta_path, delta_record, move=True)
            if not minted:
                self.bytes_saved += body.size - delta_size
        finally:
            await asyncio.to_thread(delta_path.unlink, True)
        await self._delete_quietly(bucket, key.passthrough_name, key)
        return StoreResult(stored, "delta", "reference" if minted else "delta", ratio)

    async def _passthrough(
        self,
        bucket: str,
        key: ObjectKey,
        body: SpooledFile,
        record: FileMetadata,
        reason: Reason,
        ratio: float | None = None,
    ) -> StoreResult:
        stored = await self.backend.write(bucket, key.passthrough_name, body.path, record, move=True)
        # The new variant is visible; only now drop the other kind (§2.6).
        await self._delete_quietly(bucket, key.delta_name, key)
        return StoreResult(stored, "passthrough", reason, ratio)

    async def _delete_quietly(self, bucket: str, name: str, key: ObjectKey) -> None:
        try:
            await self.backend.delete(bucket, name)
        except Exception:
            log.exception("could not delete superseded %s of %s/%s", name, bucket, key.key)

    async def _drop_reference(self, bucket: str, key: ObjectKey) -> None:
        """Roll back a reference this PUT created (its object is not stored as a delta)."""
        try:
            await self.backend.delete(bucket, key.reference_name)
        except Exception:
            log.exception("could not roll back %s/%s", bucket, key.reference_name)
        self.references.evict(bucket, key.prefix)
