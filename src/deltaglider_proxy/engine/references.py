"""The reference cache: verified local copies of deltaspaces' ``reference.bin`` files, and of the
decoded intermediates of delta chains (a ``chain`` bucket's bases), keyed by content SHA-256.

The codec works file to file, so a reference is kept as a file on the local disk (the state
directory) rather than in RAM: a 2 GB baseline costs page cache, not heap, and the kernel keeps
hot ones in memory anyway. The cache is bounded in bytes (``cache_size_mb``) with LRU eviction;
an entry in use by an encode or decode is pinned and only removed once released. Every entry was
SHA-256 verified when it was loaded, so a corrupt backend copy is caught before any decode.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

CacheKey = tuple[str, str, str]  # (bucket, deltaspace prefix, content sha256)


@dataclass
class _Entry:
    path: Path
    size: int
    sha256: str
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)
    evicted: bool = False


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size_bytes: int
    max_bytes: int
    entries: int


# Writes a verified copy of a reference to the given path; returns (size, sha256 hex).
Loader = Callable[[Path], Awaitable[tuple[int, str]]]


class ReferenceMismatch(Exception):
    """The reference's bytes do not have the SHA-256 its delta was computed against."""


class ReferenceCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._entries: dict[CacheKey, _Entry] = {}
        self._loading: dict[CacheKey, asyncio.Lock] = {}
        self._size = 0
        self._serial = 0
        self.hits = 0
        self.misses = 0

    def start(self) -> None:
        """Create the directory; copies left by an earlier run are not trusted (it may have died
        mid-write), so they are removed."""
        if self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self._size, self.max_bytes, len(self._entries))

    def _new_path(self) -> Path:
        self._serial += 1
        return self.directory / f"ref-{os.getpid()}-{self._serial}"

    @asynccontextmanager
    async def pinned(self, bucket: str, prefix: str, sha256: str, load: Loader) -> AsyncIterator[Path]:
        """A local file holding the reference of ``(bucket, prefix)`` whose SHA-256 is
        ``sha256``, valid until the block exits. ``load`` fills a miss."""
        key = (bucket, prefix, sha256)
        entry = self._entries.get(key)
        if entry is None:
            lock = self._loading.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    entry = self._entries.get(key)
                    if entry is None:
                        self.misses += 1
                        entry = await self._load(key, sha256, load)
                    else:
                        self.hits += 1
            finally:
                if not lock.locked():
                    self._loading.pop(key, None)
        else:
            self.hits += 1
        async with self._pin(entry) as path:
            yield path

    @asynccontextmanager
    async def _pin(self, entry: _Entry) -> AsyncIterator[Path]:
        entry.pins += 1
        entry.last_used = time.monotonic()
        try:
            yield entry.path
        finally:
            entry.pins -= 1
            if entry.evicted and entry.pins == 0:
                await asyncio.to_thread(entry.path.unlink, True)

    async def _load(self, key: CacheKey, sha256: str, load: Loader) -> _Entry:
        path = self._new_path()
        try:
            size, actual = await load(path)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        if actual != sha256:
            await asyncio.to_thread(path.unlink, True)
            raise ReferenceMismatch(
                f"reference of {key[0]}/{key[1]!r} has sha256 {actual}, expected {sha256}"
            )
        return await self._insert(key, _Entry(path, size, sha256))

    async def adopt(
        self, bucket: str, prefix: str, sha256: str, source: Path, *, link_only: bool = False
    ) -> None:
        """Cache a reference we just wrote from ``source`` (left in place) without re-reading
        it from the backend: a hard link when possible, else a copy (unless ``link_only``: an
        opportunistic entry is not worth copying a large file)."""
        if self.max_bytes <= 0:
            return
        path = self._new_path()

        def link_or_copy() -> int:
            try:
                os.link(source, path)
            except OSError:
                if link_only:
                    return -1
                shutil.copyfile(source, path)
            return path.stat().st_size

        size = await asyncio.to_thread(link_or_copy)
        if size < 0:
            return
        await self._insert((bucket, prefix, sha256), _Entry(path, size, sha256))

    def new_path(self) -> Path:
        """A fresh path inside the cache directory (for a file to be :meth:`adopt_pinned`)."""
        return self._new_path()

    def has(self, bucket: str, prefix: str, sha256: str) -> bool:
        return (bucket, prefix, sha256) in self._entries

    def hit(self, bucket: str, prefix: str, sha256: str) -> AbstractAsyncContextManager[Path] | None:
        """The cached copy of content ``sha256``, pinned while the returned context is open;
        None on a miss (nothing is loaded)."""
        entry = self._entries.get((bucket, prefix, sha256))
        if entry is None:
            return None
        self.hits += 1
        return self._pin(entry)

    @asynccontextmanager
    async def adopt_pinned(self, bucket: str, prefix: str, sha256: str, path: Path) -> AsyncIterator[Path]:
        """Take ownership of ``path`` (a verified file made by :meth:`new_path`) as the cached copy
        of ``sha256`` and keep it pinned while the block runs."""
        self.misses += 1
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        entry = await self._insert((bucket, prefix, sha256), _Entry(path, size, sha256))
        async with self._pin(entry) as pinned:
            yield pinned

    async def _insert(self, key: CacheKey, entry: _Entry) -> _Entry:
        self._drop(key)
        if entry.size > self.max_bytes:
            # Too big to keep: serve this one use, then let it go.
            entry.evicted = True
            return entry
        self._entries[key] = entry
        self._size += entry.size
        await self._shrink()
        return entry

    async def _shrink(self) -> None:
        doomed: list[Path] = []
        for key, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if self._size <= self.max_bytes:
                break
            self._entries.pop(key)
            self._size -= entry.size
            entry.evicted = True
            if entry.pins == 0:
                doomed.append(entry.path)
        for path in doomed:
            await asyncio.to_thread(path.unlink, True)

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._size -= entry.size
        entry.evicted = True
        if entry.pins == 0:
            entry.path.unlink(missing_ok=True)

    def evict(self, bucket: str, prefix: str) -> None:
        """Forget everything cached for a deltaspace (reference deleted, or suspected corrupt)."""
        for key in [k for k in self._entries if k[0] == bucket and k[1] == prefix]:
            self._drop(key)
