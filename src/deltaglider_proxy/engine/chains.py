"""Delta chains (the ``chain`` strategy, issue 8): finding and rebuilding a delta's base.

A delta's base is ``reference.bin`` (depth 0) or another delta object of the same deltaspace,
named by filename in ``ref_path`` and by the SHA-256 of its original bytes in ``ref_sha256``.
The rules a reader enforces, so a damaged or inconsistent layout is an error and never wrong bytes:

* a record's depth is at most ``MAX_CHAIN_DEPTH_CEILING`` (whatever a bucket's config says, so
  lowering ``max_chain_depth`` never makes stored objects unreadable);
* every base is strictly shallower than its child, so a walk ends after at most ``depth`` hops and
  a cycle is impossible to follow;
* every base's recorded SHA-256 equals the child's ``ref_sha256``, and every rebuilt intermediate
  is hashed and compared with it before anything is decoded against it.

Rebuilt intermediates go into the reference cache under their content SHA-256, so a chain that
was read once is served from its nearest cached level on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from deltaglider_proxy.config.model import MAX_CHAIN_DEPTH_CEILING
from deltaglider_proxy.engine.codec import Codec, CodecBusy
from deltaglider_proxy.engine.references import Loader, ReferenceCache
from deltaglider_proxy.engine.spool import Spool
from deltaglider_proxy.engine.transfer import stream_to_file
from deltaglider_proxy.storage.base import Backend
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, REFERENCE_NAME, FileMetadata

BUSY_RETRY_SECONDS = 0.2


class ChainBroken(Exception):
    """A chain that cannot be followed safely (missing or changed base, bad depth, bad bytes)."""


@dataclass(frozen=True)
class Level:
    """One base on a chain: ``record`` is None for the deltaspace's reference.bin."""

    name: str  # backend object name
    sha256: str
    record: FileMetadata | None


def join(prefix: str, filename: str) -> str:
    return f"{prefix}/{filename}" if prefix else filename


async def encode_waiting(codec: Codec, source: Path, target: Path, out: Path, patience: float = 60.0) -> int:
    """Encode for maintenance work (re-basing dependants, repack): wait for a codec slot rather
    than fail, since the caller cannot ask anyone to retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        try:
            return await codec.encode(source, target, out)
        except CodecBusy:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(BUSY_RETRY_SECONDS)


class Chains:
    def __init__(self, backend: Backend, spool: Spool, codec: Codec, references: ReferenceCache) -> None:
        self.backend = backend
        self.spool = spool
        self.codec = codec
        self.references = references

    def reference_loader(self, bucket: str, prefix: str) -> Loader:
        async def load(path: Path) -> tuple[int, str]:
            return await stream_to_file(self.backend.read(bucket, join(prefix, REFERENCE_NAME)), path)

        return load

    async def bases(self, bucket: str, prefix: str, record: FileMetadata) -> list[Level]:
        """The bases of delta ``record``, nearest first, ending with reference.bin."""
        if record.depth > MAX_CHAIN_DEPTH_CEILING:
            raise ChainBroken(f"chain depth {record.depth} exceeds the ceiling {MAX_CHAIN_DEPTH_CEILING}")
        levels: list[Level] = []
        child = record
        while True:
            expected = child.ref_sha256 or ""
            if child.base_name == REFERENCE_NAME:
                reference = await self.backend.head(bucket, join(prefix, REFERENCE_NAME))
                if reference is None or reference.record is None:
                    raise ChainBroken(f"{join(prefix, REFERENCE_NAME)} is missing")
                # Tolerated for old records without ref_sha256: the reference's own record.
                expected = expected or reference.record.file_sha256
                levels.append(Level(join(prefix, REFERENCE_NAME), expected, None))
                return levels
            name = join(prefix, child.base_name) + DELTA_SUFFIX
            stored = await self.backend.head(bucket, name)
            base = stored.record if stored is not None else None
            if base is None or base.note != "delta":
                raise ChainBroken(f"base {name} of a chained delta is missing")
            if base.file_sha256 != expected:
                raise ChainBroken(f"base {name} has sha256 {base.file_sha256}, the delta expects {expected}")
            if base.depth >= child.depth:
                raise ChainBroken(f"base {name} has depth {base.depth}, not below its child's {child.depth}")
            levels.append(Level(name, expected, base))
            child = base

    @asynccontextmanager
    async def content(self, bucket: str, prefix: str, levels: list[Level]) -> AsyncIterator[Path]:
        """A pinned local file with the verified original bytes of ``levels[0]``."""
        async with AsyncExitStack() as stack:
            yield await self._materialise(bucket, prefix, levels, 0, stack)

    @asynccontextmanager
    async def base_of(self, bucket: str, prefix: str, record: FileMetadata) -> AsyncIterator[Path]:
        """A pinned local file with the verified bytes of delta ``record``'s base."""
        levels = await self.bases(bucket, prefix, record)
        async with self.content(bucket, prefix, levels) as path:
            yield path

    @asynccontextmanager
    async def object_content(
        self, bucket: str, prefix: str, name: str, record: FileMetadata
    ) -> AsyncIterator[Path]:
        """A pinned local file with the verified original bytes of the stored delta ``name``."""
        levels = [Level(name, record.file_sha256, record), *await self.bases(bucket, prefix, record)]
        async with self.content(bucket, prefix, levels) as path:
            yield path

    async def _materialise(
        self, bucket: str, prefix: str, levels: list[Level], index: int, stack: AsyncExitStack
    ) -> Path:
        level = levels[index]
        if level.record is None:
            return await stack.enter_async_context(
                self.references.pinned(bucket, prefix, level.sha256, self.reference_loader(bucket, prefix))
            )
        hit = self.references.hit(bucket, prefix, level.sha256)
        if hit is not None:
            return await stack.enter_async_context(hit)
        if index + 1 >= len(levels):
            raise ChainBroken(f"{level.name} left the cache and its chain was not resolved")
        # No lock is held while the levels below are rebuilt (each level pins its own entry), so
        # two reads of crossing chains can never wait on each other.
        base = await self._materialise(bucket, prefix, levels, index + 1, stack)
        out = self.references.new_path()
        delta = self.spool.new_path(".delta")
        try:
            await stream_to_file(self.backend.read(bucket, level.name), delta)
            _, actual = await self.codec.decode_hashed(base, delta, out)
        except BaseException:
            await asyncio.to_thread(out.unlink, True)
            raise
        finally:
            await asyncio.to_thread(delta.unlink, True)
        if actual != level.sha256:
            await asyncio.to_thread(out.unlink, True)
            raise ChainBroken(f"rebuilt {level.name} has sha256 {actual}, expected {level.sha256}")
        return await stack.enter_async_context(
            self.references.adopt_pinned(bucket, prefix, level.sha256, out)
        )
