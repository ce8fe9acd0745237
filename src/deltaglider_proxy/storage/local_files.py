"""Reading local files (spool, decrypted temp files, pinned objects) as async byte streams,
off the event loop."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from deltaglider_proxy.storage.base import StoredObject

P = ParamSpec("P")
T = TypeVar("T")

READ_BYTES = 1024 * 1024
# PinnedFile.read_ahead: results made ahead of the consumer (memory per read is about this many
# results), and at most this many per thread call, so other blocking work gets threads too.
READ_AHEAD = 2
MAX_RESULTS_PER_CALL = 16


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
    threads through :meth:`run`, :meth:`submit` and :meth:`read_ahead`; :meth:`close` never
    closes the fd under a call still running (a reused fd number could otherwise be read), it
    defers the close.
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
        outer = asyncio.shield(self._start(functools.partial(self._call, func, *args, **kwargs)))
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

    async def read_ahead(
        self, func: Callable[..., T], calls: Iterable[tuple[Any, ...]], ahead: int = READ_AHEAD
    ) -> AsyncIterator[T]:
        """``func(fd, *args)`` for each ``args`` of ``calls``, in order, one result at a time.

        The calls run one after the other in worker threads, at most ``ahead`` results ahead of
        the consumer, so reading and sending overlap. While the consumer keeps up, one thread
        call goes on from one result to the next (no round trip through the event loop per
        result); once it is ``ahead`` results ahead it returns, so no thread waits on a slow
        consumer, and the next result starts a new call. A failing call ends the sequence with
        its exception after the results before it; ``calls`` is advanced in worker threads.
        """
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[_Outcome[T]] = asyncio.Queue()
        state = _ReadAhead(iter(calls), ahead)

        def produce() -> None:
            for _ in range(MAX_RESULTS_PER_CALL):
                if not state.take_turn():
                    return  # done, or far enough ahead: the consumer starts the next call
                outcome: _Outcome[T]
                try:
                    args = next(state.calls, None)
                    outcome = _END if args is None else _Result(self._call(func, *args))
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                    outcome = _Failed(exc)
                if not isinstance(outcome, _Result):
                    state.finish()
                loop.call_soon_threadsafe(results.put_nowait, outcome)
            # Made its share: the rest in a new call, queued behind other blocking work. The
            # loop starts it, as the consumer may be waiting with nothing left to take.
            state.yield_turn()
            loop.call_soon_threadsafe(more)

        def more() -> None:
            # Closed already: the consumer is gone (its generator may be finalized after the
            # close), so nothing more is wanted.
            if not self._closed and state.wants_producer():
                self._start(produce)  # its outcome travels through ``results``

        more()
        try:
            while True:
                outcome = await results.get()
                if isinstance(outcome, _Failed):
                    raise outcome.error
                if not isinstance(outcome, _Result):
                    return
                state.consumed()
                more()
                yield outcome.value
        finally:
            state.finish()

    def close(self) -> None:
        """Close the fd now, or when the last call still running on it returns."""
        if self._closed:
            return
        self._closed = True
        if not self._busy:
            os.close(self._fd)  # a read-only close does not block

    def _start(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call`` in a worker thread, holding the fd open until it returns."""
        if self._closed:
            raise RuntimeError("PinnedFile used after close")
        running = asyncio.get_running_loop().run_in_executor(None, call)
        self._busy.add(running)
        running.add_done_callback(self._settled)
        return running

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


class _ReadAhead:
    """What :meth:`PinnedFile.read_ahead`'s consumer and its producing thread calls share."""

    def __init__(self, calls: Iterator[tuple[Any, ...]], ahead: int) -> None:
        self.calls = calls
        self._lock = threading.Lock()
        self._room = ahead  # results the producer may make before the consumer takes more
        self._producing = False
        self._done = False

    def wants_producer(self) -> bool:
        """Consumer side: whether to start a producing call (none runs, and one is useful)."""
        with self._lock:
            start = not self._producing and not self._done and self._room > 0
            self._producing = self._producing or start
            return start

    def take_turn(self) -> bool:
        """Producer side: claim room for one more result, or stop producing."""
        with self._lock:
            if self._done or self._room == 0:
                self._producing = False
                return False
            self._room -= 1
            return True

    def yield_turn(self) -> None:
        """Producer side: a call that made its share of results and returns."""
        with self._lock:
            self._producing = False

    def consumed(self) -> None:
        with self._lock:
            self._room += 1

    def finish(self) -> None:
        with self._lock:
            self._done = True


@dataclass(frozen=True)
class _Result(Generic[T]):
    value: T


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _End:
    pass


_END = _End()
_Outcome = _Result[T] | _Failed | _End


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    # Marks an exception as seen, so an abandoned call does not log "exception was never
    # retrieved"; whoever awaits the future still gets it raised.
    if not future.cancelled():
        future.exception()
