"""The IAM service: serialises store calls, rebuilds the index after each change, reloads on
file changes made by someone else (a restore, another instance sharing the directory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from deltaglider_proxy.iam.declarative import Plan, ReconcileError, apply, parse_declared, plan, summary
from deltaglider_proxy.iam.index import IamIndex, build_index
from deltaglider_proxy.iam.sealed import SealedFileError
from deltaglider_proxy.iam.store import IamDatabase

log = logging.getLogger(__name__)
T = TypeVar("T")
WATCH_INTERVAL_SECONDS = 2.0


class EmptyDeclaration(ReconcileError):
    def __init__(self, reason: str) -> None:
        ValueError.__init__(self, reason)


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

    async def reconcile(
        self, users_doc: list[dict[str, Any]], groups_doc: list[dict[str, Any]], *, dry_run: bool = False
    ) -> Plan:
        """Bring the database to the declared users and groups (§3.10); ReconcileError if invalid.

        An empty declaration over a non-empty database is refused: it would delete every user,
        which is almost always a config mistake rather than intent.
        """
        users, groups = parse_declared(users_doc, groups_doc)
        async with self._lock:
            if not users and not groups and self.db.user_count():
                raise EmptyDeclaration(
                    "access.iam_mode is declarative but access.iam_users / access.iam_groups are empty: that "
                    f"would delete all {self.db.user_count()} IAM users. Add them to the YAML first (see "
                    "docs/operations.md, Access control) or use iam_mode: gui"
                )
            result = await asyncio.to_thread(plan, self.db, users, groups)
            if dry_run or result.empty:
                return result
            try:
                await asyncio.to_thread(apply, self.db, result, users)
            finally:
                await asyncio.to_thread(self._rebuild)
            log.info("[declarative-iam] reconciled: %s", await asyncio.to_thread(summary, self.db, result))
            return result

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
                self.db.mark_seen()
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
