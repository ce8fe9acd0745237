"""The IAM service: serialises store calls, rebuilds the index after each change, reloads on
file changes made by someone else (a restore, another instance sharing the directory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from deltaglider_proxy.iam.index import IamIndex, build_index
from deltaglider_proxy.iam.sealed import SealedFileError
from deltaglider_proxy.iam.store import IamDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")
WATCH_INTERVAL_SECONDS = 2.0


class IamService:
    def __init__(self, db: IamDatabase) -> None:
        self.db = db
        self.index = IamIndex()
        self.version = 0
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[IamIndex], None]] = []
        self._rebuild()

    @classmethod
    async def open(cls, path: Path, key: bytes) -> IamService:
        db = await asyncio.to_thread(IamDatabase, path, key)
        return cls(db)

    def on_rebuild(self, listener: Callable[[IamIndex], None]) -> None:
        self._listeners.append(listener)
        listener(self.index)

    def _rebuild(self) -> None:
        users, groups = self.db.snapshot()
        self.index = build_index(users, groups)
        self.version += 1
        for listener in self._listeners:
            listener(self.index)

    async def read(self, call: Callable[[IamDatabase], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(call, self.db)

    async def write(self, call: Callable[[IamDatabase], T]) -> T:
        """Run one mutation; the index is rebuilt before the caller sees the result."""
        async with self._lock:
            try:
                return await asyncio.to_thread(call, self.db)
            finally:
                await asyncio.to_thread(self._rebuild)

    async def reload_if_changed(self) -> bool:
        async with self._lock:
            if not self.db.changed_on_disk():
                return False
            try:
                await asyncio.to_thread(self.db.load)
            except (SealedFileError, OSError) as exc:
                log.error(
                    "IAM database changed on disk but cannot be loaded; keeping the current state: %s", exc
                )
                self.db.file_signature = None
                return False
            await asyncio.to_thread(self._rebuild)
            log.info("IAM database changed on disk: reloaded (%d users)", self.index.user_count)
            return True

    def start_watching(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            try:
                await self.reload_if_changed()
            except Exception:
                log.exception("IAM database watch failed")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.db.close()
