"""Request bodies and intermediate files spooled to a private local directory.

Bytes arrive in small pieces; :class:`SpoolWriter` batches them and hashes + writes each batch in
a worker thread so the event loop never blocks and memory stays at a few MiB per request. The
spool has a byte budget: when it is exhausted new bodies are refused with 503 SlowDown.

Spool files are scratch: they are not fsynced (a crash loses them, and the next start deletes
them anyway). Whoever keeps one beyond the request makes it durable — the filesystem backend
fsyncs what it renames into place, multipart fsyncs a part before it counts as uploaded. Syncing
here as well would write every body to disk twice whenever what is stored is not the spooled
bytes themselves (a delta, or ciphertext).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deltaglider_proxy.storage.base import SealedBody

BATCH_BYTES = 4 * 1024 * 1024


class SpoolFull(Exception):
    """The spool's byte budget is exhausted."""


class SpoolOverrun(Exception):
    """More bytes arrived than the sealed body was declared to hold."""


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


@dataclass
class SpooledFile:
    """A complete file in the spool with the digests computed while it was written."""

    path: Path
    size: int
    md5_hex: str
    sha256_hex: str
    checksums: dict[str, str] = field(default_factory=dict)
    # Set when the body was sealed for its backend as it arrived: then only the ciphertext was
    # written, and ``path`` does not exist (the body can only be stored as it is).
    sealed: SealedBody | None = None
    _release: Callable[[], None] | None = None

    def discard(self) -> None:
        """Delete the file (if still there) and give its bytes back to the budget."""
        self.path.unlink(missing_ok=True)
        if self.sealed is not None:
            self.sealed.discard()
        self.release()

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class Spool:
    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.used_bytes = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        # Files left by a crash belong to requests that never completed.
        for leftover in self.directory.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
            elif leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)

    def reserve(self, size: int) -> Callable[[], None]:
        if self.max_bytes is not None and self.used_bytes + size > self.max_bytes:
            raise SpoolFull(f"spool budget of {self.max_bytes} bytes exhausted")
        self.used_bytes += size
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.used_bytes -= size

        return release

    def new_path(self, suffix: str = "") -> Path:
        return self.directory / f"{secrets.token_hex(12)}{suffix}"

    def writer(
        self,
        expected_size: int | None = None,
        extra_hashers: Iterable[tuple[str, Hasher]] = (),
        sealed: SealedBody | None = None,
    ) -> SpoolWriter:
        """A writer for one body; with ``sealed`` the bytes go there instead of to a spool file
        (they still count against the budget: the ciphertext is on local disk too). The writer
        owns ``sealed`` from here: it is discarded if no writer can be made."""
        try:
            release = self.reserve(expected_size or (sealed.size if sealed is not None else 0))
            try:
                return SpoolWriter(self.new_path(), release, dict(extra_hashers), sealed)
            except BaseException:
                release()
                raise
        except BaseException:
            if sealed is not None:
                sealed.discard()
            raise


def _consume_outcome(task: asyncio.Task[None]) -> None:
    """An abandoned batch's failure is already moot (the request failed); do not log it again."""
    if not task.cancelled():
        task.exception()


class SpoolWriter:
    """Streams bytes into a new spool file (or a sealed body), hashing MD5 + SHA-256 (+ extras)
    on the way."""

    def __init__(
        self,
        path: Path,
        release: Callable[[], None],
        extra: dict[str, Hasher],
        sealed: SealedBody | None = None,
    ) -> None:
        self.path = path
        self._release: Callable[[], None] | None = release
        self._sealed = sealed
        self._fd = -1 if sealed is not None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._fd_lock = threading.Lock()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._extra = extra
        self._pending: list[bytes] = []
        self._pending_size = 0
        # One batch is processed in worker threads while the next is being received.
        self._inflight: asyncio.Task[None] | None = None
        self.size = 0

    def _hash_and_write(self, data: bytes) -> None:
        self._sha256.update(data)
        for hasher in self._extra.values():
            hasher.update(data)
        view = memoryview(data)
        # A worker thread can outlive a cancelled request; the lock keeps it from writing to a
        # descriptor that abort() has closed (and the OS may have handed to another file).
        with self._fd_lock:
            while view and self._fd >= 0:
                written = os.write(self._fd, view)
                view = view[written:]

    async def _process(self, data: bytes) -> None:
        # MD5 is the slowest digest; it runs beside the rest so a batch costs max(), not sum().
        jobs = [asyncio.to_thread(self._md5.update, data), asyncio.to_thread(self._hash_and_write, data)]
        if self._sealed is not None:
            jobs.append(asyncio.to_thread(self._sealed.update, data))
        await asyncio.gather(*jobs)

    async def _settle(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._sealed is not None and self.size + len(data) > self._sealed.size:
            raise SpoolOverrun(f"body is longer than the {self._sealed.size} bytes declared for it")
        self._pending.append(data)
        self._pending_size += len(data)
        self.size += len(data)
        if self._pending_size >= BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        await self._settle()
        if self._pending:
            chunks, self._pending, self._pending_size = self._pending, [], 0
            self._inflight = asyncio.ensure_future(self._process(b"".join(chunks)))

    async def finish(self) -> SpooledFile:
        await self._flush()
        await self._settle()
        if self._sealed is not None:
            await asyncio.to_thread(self._sealed.finish)
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
        checksums = {name: h.b64digest() for name, h in self._extra.items() if hasattr(h, "b64digest")}
        result = SpooledFile(
            path=self.path,
            size=self.size,
            md5_hex=self._md5.hexdigest(),
            sha256_hex=self._sha256.hexdigest(),
            checksums=checksums,
            sealed=self._sealed,
            _release=self._release,
        )
        self._release = None
        self._sealed = None
        return result

    def abort(self) -> None:
        sealed, self._sealed = self._sealed, None
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.add_done_callback(_consume_outcome)
            if sealed is not None:
                # Not now: a thread may be sealing a batch (discard would wait for it here).
                late = sealed
                inflight.add_done_callback(lambda _task: late.discard())
                sealed = None
        if sealed is not None:
            sealed.discard()
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        self.path.unlink(missing_ok=True)
        if self._release is not None:
            self._release()
            self._release = None
