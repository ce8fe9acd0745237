"""IAM as code, hot: re-read the config file when it changes and reconcile ``access.iam_*``.

Only the IAM part of ``access`` is applied live (users, groups, ``iam_mode``); every other
setting still needs a restart. A file that does not load, or a declaration that does not
validate, changes nothing and is logged with the reason — the running IAM state stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from deltaglider_proxy.config.load import ConfigError, load_snapshot
from deltaglider_proxy.config.model import AccessConfig
from deltaglider_proxy.iam.declarative import Plan, ReconcileError
from deltaglider_proxy.iam.service import IamService

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


class DeclarativeWatcher:
    def __init__(
        self,
        source: Path,
        iam: IamService,
        on_access: Callable[[AccessConfig], None],
        on_reconciled: Callable[[Plan], None],
    ) -> None:
        self.source = source
        self.iam = iam
        self._on_access = on_access
        self._on_reconciled = on_reconciled
        self._signature = self._stat()
        self._task: asyncio.Task[None] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.source.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def check(self) -> bool:
        """Reload if the file changed; True when a new access section was taken."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            snapshot = await asyncio.to_thread(load_snapshot)
        except ConfigError as exc:
            log.error("config file changed but does not load; IAM unchanged:\n%s", exc)
            return False
        access = snapshot.config.access
        if access.iam_mode == "declarative":
            try:
                plan = await self.iam.reconcile(access.iam_users, access.iam_groups)
            except ReconcileError as exc:
                log.error("config file changed: %s", exc)
                return False
            self._on_reconciled(plan)
        self._on_access(access)
        log.info("config file changed: access.iam_mode=%s applied", access.iam_mode)
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.check()
            except Exception:
                log.exception("config watch failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
