"""Backend latency metrics without touching the Backend protocol: a transparent wrapper.

Every call the engine makes to one named backend is timed into
``deltaglider_backend_request_duration_seconds{backend,operation}``; calls that raise count in
``deltaglider_backend_errors_total``. Streaming calls (``read``, ``list``) are timed to their first
chunk/entry: the rest of a GET's duration is the client's download speed, not the backend's.
Optional methods (``copy``, ``check``, ``start``, ``can_copy``…) stay optional: anything the
wrapper does not define is looked up on the wrapped backend, so ``getattr(b, "copy", None)`` still
says whether the backend can copy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from deltaglider_proxy.observability.metrics import Metrics
from deltaglider_proxy.storage.base import (
    Backend,
    BucketAlreadyExists,
    BucketInfo,
    BucketNotEmpty,
    BucketNotFound,
    CommonPrefix,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    StoredObject,
)
from deltaglider_proxy.storage.metadata import FileMetadata
from deltaglider_proxy.storage.router import BackendRouter

T = TypeVar("T")
Item = TypeVar("Item")
SINGLETON_NAME = "default"
# Answers about the caller's request, not failures of the backend: not counted as errors.
_ANSWERS = (ObjectNotFound, BucketNotFound, BucketNotEmpty, BucketAlreadyExists, ObjectExists, ObjectChanged)


class InstrumentedBackend:
    def __init__(self, inner: Backend, name: str, metrics: Metrics) -> None:
        self.inner = inner
        self.name = name
        self._metrics = metrics

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self.inner, attribute)
        if attribute == "copy":
            return self._timed_callable("copy", value)
        if attribute == "write_sealed":
            return self._timed_callable("write", value)
        return value

    def _timed_callable(
        self, operation: str, func: Callable[..., Awaitable[T]]
    ) -> Callable[..., Awaitable[T]]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            return await self._timed(operation, func(*args, **kwargs))

        return timed

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        failed = True
        try:
            result = await call
            failed = False
            return result
        except _ANSWERS:
            failed = False
            raise
        finally:
            self._metrics.observe_backend(self.name, operation, time.perf_counter() - started, failed=failed)

    async def _first_timed(self, operation: str, stream: AsyncIterator[Item]) -> AsyncIterator[Item]:
        started = time.perf_counter()
        observed = False
        try:
            async for item in stream:
                if not observed:
                    observed = True
                    self._metrics.observe_backend(
                        self.name, operation, time.perf_counter() - started, failed=False
                    )
                yield item
        except Exception as exc:
            if not observed:
                observed = True
                self._metrics.observe_backend(
                    self.name, operation, time.perf_counter() - started, failed=not isinstance(exc, _ANSWERS)
                )
            raise
        finally:
            if not observed:  # empty result: the whole call was the latency
                self._metrics.observe_backend(
                    self.name, operation, time.perf_counter() - started, failed=False
                )
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

    # ------------------------------------------------------------------ the Backend protocol

    async def list_buckets(self) -> list[BucketInfo]:
        return await self._timed("list_buckets", self.inner.list_buckets())

    async def bucket_exists(self, bucket: str) -> bool:
        return await self._timed("bucket_exists", self.inner.bucket_exists(bucket))

    async def create_bucket(self, bucket: str) -> bool:
        return await self._timed("create_bucket", self.inner.create_bucket(bucket))

    async def delete_bucket(self, bucket: str) -> None:
        await self._timed("delete_bucket", self.inner.delete_bucket(bucket))

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        return await self._timed("head", self.inner.head(bucket, name))

    def read(self, bucket: str, name: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self._first_timed("read", self.inner.read(bucket, name, start, end))

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
        return await self._timed(
            "write",
            self.inner.write(bucket, name, source, record, move=move, if_absent=if_absent, if_match=if_match),
        )

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        return await self._timed("write_directory_marker", self.inner.write_directory_marker(bucket, name))

    async def delete(self, bucket: str, name: str) -> bool:
        return await self._timed("delete", self.inner.delete(bucket, name))

    def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        return self._first_timed("list", self.inner.list(bucket, prefix, start_after, delimiter))

    async def usage_bytes(self, bucket: str) -> int:
        return await self._timed("usage_bytes", self.inner.usage_bytes(bucket))

    async def close(self) -> None:
        await self.inner.close()


def named_backends(storage: Backend) -> dict[str, Backend]:
    """The storage's backends by name: a router's own names, or ``default`` for a singleton."""
    if isinstance(storage, BackendRouter):
        return dict(storage.backends)
    return {SINGLETON_NAME: storage}


def instrument(storage: Backend, metrics: Metrics) -> Backend:
    """``storage`` with each named backend wrapped; a router is rebuilt around the wrappers so
    its routing (and its same-backend check for server-side copies) is unchanged."""
    if isinstance(storage, BackendRouter):
        wrapped: dict[str, Backend] = {
            name: InstrumentedBackend(inner, name, metrics) for name, inner in storage.backends.items()
        }
        return BackendRouter(wrapped, storage.default, storage.routes)
    return InstrumentedBackend(storage, SINGLETON_NAME, metrics)
