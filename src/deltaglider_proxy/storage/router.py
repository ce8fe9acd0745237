"""Several named backends behind one :class:`Backend` (storage.md §10.3–§10.4).

The engine, its caches and its listings speak in *virtual* bucket names (what clients see). The
router sends each call to the backend its bucket is routed to, with the *real* bucket name
(the alias) substituted. Buckets without a route go to the default backend under their own name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from deltaglider_proxy.storage.base import (
    Backend,
    BucketInfo,
    CommonPrefix,
    SealedBody,
    StoredObject,
)
from deltaglider_proxy.storage.metadata import FileMetadata, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    backend: str
    real_bucket: str


class BackendRouter:
    """Dispatches every storage call to the backend a bucket is routed to."""

    def __init__(self, backends: Mapping[str, Backend], default: str, routes: Mapping[str, Route]) -> None:
        if default not in backends:
            raise ValueError(f"default backend {default!r} is not one of {sorted(backends)}")
        for bucket, route in routes.items():
            if route.backend not in backends:
                raise ValueError(f"bucket {bucket!r} routes to unknown backend {route.backend!r}")
        self.backends = dict(backends)
        self.default = default
        self.routes = {bucket.lower(): route for bucket, route in routes.items()}
        # real (backend, bucket) → virtual name, to map ListBuckets entries back.
        self._virtual = {(r.backend, r.real_bucket): virtual for virtual, r in self.routes.items()}

    def resolve(self, bucket: str) -> tuple[Backend, str]:
        route = self.routes.get(bucket)
        if route is None:
            return self.backends[self.default], bucket
        return self.backends[route.backend], route.real_bucket

    def backend_name(self, bucket: str) -> str:
        route = self.routes.get(bucket)
        return self.default if route is None else route.backend

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for backend in self.backends.values():
            start = getattr(backend, "start", None)
            if start is not None:
                await start()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()

    # ------------------------------------------------------------------ buckets

    async def list_buckets(self) -> list[BucketInfo]:
        """Every routed virtual name plus every real bucket of every backend, mapped back."""
        found: dict[str, BucketInfo] = {}
        names = list(self.backends)
        results = await asyncio.gather(
            *(self.backends[name].list_buckets() for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # A partial answer beats none: one unreachable backend must not hide the rest.
                log.warning("ListBuckets: backend %r failed: %s", name, result)
                continue
            for info in result:
                virtual = self._virtual.get((name, info.name), info.name)
                found.setdefault(virtual, BucketInfo(virtual, info.created))
        for virtual in self.routes:
            found.setdefault(virtual, BucketInfo(virtual, utcnow()))
        return sorted(found.values(), key=lambda b: b.name)

    async def bucket_exists(self, bucket: str) -> bool:
        backend, real = self.resolve(bucket)
        return await backend.bucket_exists(real)

    async def create_bucket(self, bucket: str) -> bool:
        backend, real = self.resolve(bucket)
        return await backend.create_bucket(real)

    async def delete_bucket(self, bucket: str) -> None:
        backend, real = self.resolve(bucket)
        await backend.delete_bucket(real)

    async def usage_bytes(self, bucket: str) -> int:
        backend, real = self.resolve(bucket)
        return await backend.usage_bytes(real)

    # ------------------------------------------------------------------ server-side copy

    def can_copy(self, src_bucket: str, dst_bucket: str) -> bool:
        """A server-side copy needs both buckets on one backend that can copy."""
        source, _ = self.resolve(src_bucket)
        target, _ = self.resolve(dst_bucket)
        return source is target and hasattr(source, "copy")

    async def copy(
        self, bucket: str, source_name: str, target_bucket: str, target_name: str, record: FileMetadata
    ) -> StoredObject:
        backend, real = self.resolve(bucket)
        target, real_target = self.resolve(target_bucket)
        copier = getattr(backend, "copy", None)
        if target is not backend or copier is None:
            raise ValueError(f"no server-side copy from {bucket!r} to {target_bucket!r}")
        result: StoredObject = await copier(real, source_name, real_target, target_name, record)
        return result

    # ------------------------------------------------------------------ objects

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        backend, real = self.resolve(bucket)
        return await backend.head(real, name)

    def read(self, bucket: str, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        backend, real = self.resolve(bucket)
        return backend.read(real, name, start, end)

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
        backend, real = self.resolve(bucket)
        return await backend.write(
            real, name, source, record, move=move, if_absent=if_absent, if_match=if_match
        )

    def sealing_writer(self, bucket: str, size: int) -> SealedBody | None:
        backend, real = self.resolve(bucket)
        offer = getattr(backend, "sealing_writer", None)
        return None if offer is None else cast("SealedBody | None", offer(real, size))

    async def write_sealed(
        self, bucket: str, name: str, sealed: SealedBody, record: FileMetadata, *, if_absent: bool = False
    ) -> StoredObject:
        backend, real = self.resolve(bucket)
        writer = backend.write_sealed  # type: ignore[attr-defined]  # only those that sealed it
        stored: StoredObject = await writer(real, name, sealed, record, if_absent=if_absent)
        return stored

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        backend, real = self.resolve(bucket)
        return await backend.write_directory_marker(real, name)

    async def delete(self, bucket: str, name: str) -> bool:
        backend, real = self.resolve(bucket)
        return await backend.delete(real, name)

    def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        backend, real = self.resolve(bucket)
        return backend.list(real, prefix, start_after, delimiter)
