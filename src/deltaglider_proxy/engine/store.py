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

from deltaglider_proxy.engine.bases import BaseChooser, Candidate, reference_candidate
from deltaglider_proxy.engine.chains import ChainBroken, Chains
from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.dependants import Dependants, delta_record
from deltaglider_proxy.engine.eligibility import (
    CompressionPolicies,
    CompressionPolicy,
    listed_extension,
    sniff_file,
)
from deltaglider_proxy.engine.keys import ObjectKey
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.similarity import WORTH_ENCODING, Sketch, containment, sketch_file
from deltaglider_proxy.engine.spool import Spool, SpooledFile
from deltaglider_proxy.engine.transfer import stream_to_file
from deltaglider_proxy.storage.base import Backend, ObjectExists, StoredObject
from deltaglider_proxy.storage.metadata import REFERENCE_ORIGINAL_NAME, FileMetadata

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
class Rejected:
    """No base gave an acceptable delta."""

    reason: Reason
    ratio: float | None


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
        self.chains = Chains(backend, spool, codec, references)
        self.chooser = BaseChooser(backend, self.chains)
        self.dependants = Dependants(backend, self.chains, policies)

    # ------------------------------------------------------------------ reference access

    def _cached_sketch(self, sha256: str) -> Sketch | None:
        sketch = self._sketches.get(sha256)
        if sketch is not None:
            self._sketches.move_to_end(sha256)
        return sketch

    def _remember_sketch(self, sha256: str, sketch: Sketch) -> None:
        self._sketches[sha256] = sketch
        self._sketches.move_to_end(sha256)
        while len(self._sketches) > SKETCH_CACHE_ENTRIES:
            self._sketches.popitem(last=False)

    async def _reference_sketch(self, sha256: str, path: Path) -> Sketch:
        sketch = self._cached_sketch(sha256)
        if sketch is None:
            sketch = await asyncio.to_thread(sketch_file, path)
            self._remember_sketch(sha256, sketch)
        return sketch

    # ------------------------------------------------------------------ PUT

    async def put(self, bucket: str, key: ObjectKey, body: SpooledFile, record: FileMetadata) -> StoreResult:
        """Store ``body`` (the caller still owns and discards it) as ``key``."""
        policy = self.policies.for_bucket(bucket)
        async with self.locks.hold(bucket, key.prefix):
            # Whatever the new version becomes, deltas based on the old one must not break.
            await self.dependants.release(bucket, key)
            # A sealed body has no plaintext left to encode: it is stored as it is (it was sealed
            # because compression was off; a reload may have turned it on since).
            if not policy.enabled or body.sealed is not None:
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
            outcome = await self._encode_best(
                bucket, key, copy, record.file_size, sha256, ref_record, False, policy, delta_path
            )
            if isinstance(outcome, Rejected):
                return outcome.reason
            candidate, delta_size = outcome
            async with self.locks.hold(bucket, key.prefix):
                current = await self.backend.head(bucket, key.passthrough_name)
                now_ref = await self.backend.head(bucket, key.reference_name)
                if not same_version(current, record) or now_ref is None or now_ref.record is None:
                    return "superseded"
                if now_ref.record.file_sha256 != ref_record.file_sha256:
                    return "superseded"
                if not await self._base_unchanged(bucket, candidate):
                    return "superseded"
                assert current is not None and current.record is not None
                # A stale delta of this key (both kinds present) may have dependants.
                await self.dependants.release(bucket, key)
                new = delta_record(current.record, key.filename, candidate.base, delta_size, candidate.depth)
                await self.backend.write(bucket, key.delta_name, delta_path, new, move=True)
                self.bytes_saved += record.file_size - delta_size
                await self._delete_quietly(bucket, key.passthrough_name, key)
                await self._became_tip(bucket, key, policy, record.file_sha256, copy)
            return "delta"
        finally:
            await asyncio.to_thread(copy.unlink, True)
            await asyncio.to_thread(delta_path.unlink, True)

    async def _base_unchanged(self, bucket: str, candidate: Candidate) -> bool:
        """Whether a chained base is still the object the delta was computed against, no deeper."""
        base = candidate.base
        if base.record is None:
            return True
        stored = await self.backend.head(bucket, base.name)
        now = stored.record if stored is not None else None
        return (
            now is not None
            and now.note == "delta"
            and now.file_sha256 == base.sha256
            and now.depth < candidate.depth
        )

    async def _became_tip(
        self, bucket: str, key: ObjectKey, policy: CompressionPolicy, sha256: str, source: Path
    ) -> None:
        """Under ``chain``, a new delta is the next PUT's base: remember it and keep its bytes
        in the cache, so that PUT does not rebuild them."""
        if policy.strategy != "chain":
            return
        self.chooser.advance(bucket, key)
        if not self.references.has(bucket, key.prefix, sha256):
            await self.references.adopt(bucket, key.prefix, sha256, source)

    async def _encode_best(
        self,
        bucket: str,
        key: ObjectKey,
        source: Path,
        size: int,
        sha256: str,
        reference: FileMetadata,
        minted: bool,
        policy: CompressionPolicy,
        out: Path,
    ) -> tuple[Candidate, int] | Rejected:
        """Encode ``source`` against the best acceptable base into ``out``: the similarity gate
        (skipped for a just-minted reference: it is the body) and the ratio rule apply to each."""
        if size == 0:
            return Rejected("ratio", None)
        if minted:
            candidates = [reference_candidate(key, reference)]
        else:
            candidates = await self.chooser.candidates(bucket, key, policy, reference)
        body_sketch: asyncio.Task[Sketch] | None = None
        if not minted:
            body_sketch = asyncio.ensure_future(asyncio.to_thread(sketch_file, source))
        rejected = Rejected("dissimilar", None)
        try:
            if body_sketch is not None and len(candidates) > 1:
                candidates = await self._shallowest_first(bucket, key, candidates, body_sketch)
            for candidate in candidates:
                try:
                    async with self.chains.content(bucket, key.prefix, candidate.levels) as base_path:
                        if body_sketch is not None:
                            base_sketch = await self._reference_sketch(candidate.base.sha256, base_path)
                            if containment(base_sketch, await body_sketch) < WORTH_ENCODING:
                                continue
                        delta_size = await self.codec.encode(base_path, source, out)
                except ChainBroken as exc:
                    if candidate.is_reference:
                        raise
                    log.warning("%s/%s: chain base unusable (%s); trying reference.bin", bucket, key.key, exc)
                    self.chooser.forget(bucket, key.prefix)
                    continue
                ratio = delta_size / size
                if ratio < policy.max_delta_ratio:
                    if policy.strategy == "chain" and body_sketch is not None:
                        # The body is the next PUT's base: its sketch spares that PUT a rebuild.
                        self._remember_sketch(sha256, await body_sketch)
                    return candidate, delta_size
                rejected = Rejected("ratio", ratio)
            return rejected
        finally:
            if body_sketch is not None and not body_sketch.done():
                body_sketch.cancel()

    async def _shallowest_first(
        self, bucket: str, key: ObjectKey, candidates: list[Candidate], body: asyncio.Task[Sketch]
    ) -> list[Candidate]:
        """reference.bin first when the tip is no more similar to the body than reference.bin is.

        Then the chain buys nothing (Django's tarballs: every version as close to the first as to
        the previous, 91.4 % saved either way) and only costs reads: one hop instead of a walk
        down the whole chain. A tip that is more similar keeps its place (pip's wheels drift)."""
        scores: list[float] = []
        for candidate in (candidates[0], candidates[-1]):
            base_sketch = self._cached_sketch(candidate.base.sha256)
            if base_sketch is None:  # only then is the base rebuilt, just to sketch it
                try:
                    async with self.chains.content(bucket, key.prefix, candidate.levels) as base_path:
                        base_sketch = await self._reference_sketch(candidate.base.sha256, base_path)
                except ChainBroken:
                    return candidates  # the loop reports it and falls back
            scores.append(containment(base_sketch, await body))
        if scores[1] >= scores[0]:
            return [candidates[-1], *candidates[:-1]]
        return candidates

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
        delta_path = self.spool.new_path(".delta")
        try:
            outcome = await self._encode_best(
                bucket, key, body.path, body.size, body.sha256_hex, ref_record, minted, policy, delta_path
            )
            if isinstance(outcome, Rejected):
                if minted:
                    await self._drop_reference(bucket, key)
                return await self._passthrough(bucket, key, body, record, outcome.reason, outcome.ratio)
            candidate, delta_size = outcome
            new = delta_record(record, key.filename, candidate.base, delta_size, candidate.depth)
            stored = await self.backend.write(bucket, key.delta_name, delta_path, new, move=True)
            if not minted:
                self.bytes_saved += body.size - delta_size
        finally:
            await asyncio.to_thread(delta_path.unlink, True)
        await self._delete_quietly(bucket, key.passthrough_name, key)
        await self._became_tip(bucket, key, policy, body.sha256_hex, body.path)
        return StoreResult(stored, "delta", "reference" if minted else "delta", delta_size / body.size)

    async def _passthrough(
        self,
        bucket: str,
        key: ObjectKey,
        body: SpooledFile,
        record: FileMetadata,
        reason: Reason,
        ratio: float | None = None,
    ) -> StoreResult:
        if body.sealed is not None:
            sealed, body.sealed = body.sealed, None
            write_sealed = self.backend.write_sealed  # type: ignore[attr-defined]  # it sealed it
            stored: StoredObject = await write_sealed(bucket, key.passthrough_name, sealed, record)
        else:
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
