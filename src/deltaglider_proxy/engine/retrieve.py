"""The GET path for delta objects: base (cached, verified) + delta → decoded spool file,
returned only after its SHA-256 matches the record (storage.md §3.3). The base is reference.bin,
or for a chained delta the rebuilt base object (``engine.chains``: bounded hops, every
intermediate verified and cached).

A mismatch may be the cached reference's fault, so the entry is evicted and the object rebuilt
once more straight from the backend; a second mismatch is an integrity failure (500), never a
wrong byte to the client. Range requests slice the verified file, so nothing is decoded twice.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from deltaglider_proxy.engine.chains import ChainBroken, Chains
from deltaglider_proxy.engine.codec import Codec, CodecFailed
from deltaglider_proxy.engine.keys import ObjectKey
from deltaglider_proxy.engine.references import ReferenceCache, ReferenceMismatch
from deltaglider_proxy.engine.spool import Spool, SpoolFull
from deltaglider_proxy.engine.store import DeltaStore
from deltaglider_proxy.engine.transfer import stream_to_file
from deltaglider_proxy.storage.base import Backend
from deltaglider_proxy.storage.metadata import FileMetadata

log = logging.getLogger(__name__)
ATTEMPTS = 2


class IntegrityError(Exception):
    """Stored bytes failed verification; never served."""


class SpoolExhausted(Exception):
    """No spool budget left to rebuild an object (the edge answers 503 SlowDown)."""


class DecodedFile:
    """A verified, rebuilt object in the spool; ``discard`` gives its space back."""

    def __init__(self, path: Path, release: object) -> None:
        self.path = path
        self._release = release

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        release = self._release
        self._release = None
        if callable(release):
            release()


class DeltaRetriever:
    def __init__(
        self, backend: Backend, spool: Spool, codec: Codec, references: ReferenceCache, store: DeltaStore
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.codec = codec
        self.references = references
        self.store = store
        self.chains: Chains = store.chains

    async def rebuild(self, bucket: str, key: ObjectKey, record: FileMetadata) -> DecodedFile:
        """The verified original bytes of the delta object ``key``."""
        try:
            release = self.spool.reserve(record.file_size + (record.delta_size or 0))
        except SpoolFull:
            raise SpoolExhausted() from None
        out = self.spool.new_path(".out")
        decoded = DecodedFile(out, release)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                if await self._attempt(bucket, key, record, out):
                    if self.store.policies.for_bucket(bucket).strategy == "chain":
                        # In a chain this object is likely the next one's base: keep it (a link).
                        await self.references.adopt(
                            bucket, key.prefix, record.file_sha256, out, link_only=True
                        )
                    return decoded
                self.references.evict(bucket, key.prefix)
                log.error(
                    "delta %s/%s failed verification (attempt %d of %d)", bucket, key.key, attempt, ATTEMPTS
                )
            raise IntegrityError(f"{bucket}/{key.key}: rebuilt bytes do not match the stored SHA-256")
        except BaseException:
            decoded.discard()
            raise

    async def _attempt(self, bucket: str, key: ObjectKey, record: FileMetadata, out: Path) -> bool:
        delta_path = self.spool.new_path(".delta")
        try:
            try:
                levels = await self.chains.bases(bucket, key.prefix, record)
            except ChainBroken as exc:
                raise IntegrityError(f"{bucket}/{key.key} cannot be rebuilt: {exc}") from exc
            await stream_to_file(self.backend.read(bucket, key.delta_name), delta_path)
            try:
                async with self.chains.content(bucket, key.prefix, levels) as base_path:
                    _, actual = await self.codec.decode_hashed(base_path, delta_path, out)
            except (ReferenceMismatch, CodecFailed, ChainBroken) as exc:
                # A damaged delta or base usually makes the decoder itself fail (VCDIFF carries
                # window checksums): same handling as a final-hash mismatch.
                log.error("rebuilding %s/%s failed: %s", bucket, key.key, exc)
                await asyncio.to_thread(out.unlink, True)
                return False
        finally:
            delta_path.unlink(missing_ok=True)
        if actual != record.file_sha256:
            log.error(
                "sha256 mismatch rebuilding %s/%s: expected %s, got %s",
                bucket,
                key.key,
                record.file_sha256,
                actual,
            )
            await asyncio.to_thread(out.unlink, True)
            return False
        return True
