"""Reading local files (spool, decrypted temp files, pinned objects) as async byte streams,
off the event loop."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from deltaglider_proxy.storage.base import StoredObject

P = ParamSpec("P")
T = TypeVar("T")

READ_BYTES = 1024 * 1024


async def stream_file(path: Path, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    """Bytes [start, end) of a local file, read in a worker thread one piece at a time."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(handle.seek, start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            size = READ_BYTES if remaining is None else min(READ_BYTES, remaining)
            chunk = await asyncio.to_thread(handle.read, size)
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        handle.close()


class PinnedFile:
    """An open object file plus what was read about it through that same fd.

    ``stored`` (size, record) and ``head`` (the first bytes) were read from the fd the body is
    read from, so all of them describe one inode: an object replaced meanwhile (renamed over)
    is read whole as the old one, never as a mix. Blocking work on the fd runs in worker
    threads through :meth:`run` / :meth:`submit`; :meth:`close` never closes the fd under a
    call still running (a reused fd number could otherwise be read), it defers the close.
    """

    def __init__(
        self,
        fd: int,
        stored: StoredObject,
        head: bytes = b"",
        os_error: Callable[[OSError], Exception] | None = None,
    ) -> None:
        self.stored = stored
        self.head = head
        self._fd = fd
        self._os_error = os_error
        self._busy: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def size(self) -> int:
        return self.stored.size

    def submit(
        self, func: Callable[Concatenate[int, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """Start ``func(fd, *args, **kwargs)`` in a worker thread; await the result later.

        The returned future may be cancelled or dropped (a consumer that went away): the call
        then finishes on its own, its outcome is discarded, and the fd stays open until then.
        """
        if self._closed:
            raise RuntimeError("PinnedFile used after close")
        call = functools.partial(self._call, func, *args, **kwargs)
        inner = asyncio.get_running_loop().run_in_executor(None, call)
        self._busy.add(inner)
        inner.add_done_callback(self._settled)
        outer = asyncio.shield(inner)
        outer.add_done_callback(_discard_outcome)
        return outer

    async def run(self, func: Callable[Concatenate[int, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.submit(func, *args, **kwargs)

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end), one ≤ 1 MiB pread per thread hop; a file cut short underneath
        (only an out-of-band writer does that) ends the stream early."""
        position, stop = max(start, 0), self.size if end is None else min(end, self.size)
        while position < stop:
            chunk = await self.run(os.pread, min(READ_BYTES, stop - position), position)
            if not chunk:
                break
            position += len(chunk)
            yield chunk

    def close(self) -> None:
        """Close the fd now, or when the last call still running on it returns."""
        if self._closed:
            return
        self._closed = True
        if not self._busy:
            os.close(self._fd)  # a read-only close does not block

    def _call(self, func: Callable[Concatenate[int, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(self._fd, *args, **kwargs)
        except OSError as exc:
            if self._os_error is None:
                raise
            raise self._os_error(exc) from exc

    def _settled(self, inner: asyncio.Future[Any]) -> None:
        self._busy.discard(inner)
        _discard_outcome(inner)
        if self._closed and not self._busy:
            os.close(self._fd)


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Marks an exception as seen, so an abandoned call does not log "exception was never
    # retrieved"; whoever awaits the future still gets it raised.
    if not future.cancelled():
        future.exception()
