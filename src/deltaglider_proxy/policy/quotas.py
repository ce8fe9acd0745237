"""Soft quotas and bucket freeze (storage.md §10.7).

Usage is the bucket's stored bytes on its backend (what the operator pays for), measured by a
scan that is cached, refreshed in the background and bumped by every accepted write in between.
A quota of 0 freezes the bucket: every mutation is refused, reads keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from deltaglider_proxy.config.model import BucketPolicyConfig

log = logging.getLogger(__name__)
MIB = 1024 * 1024
# Older measurements are still used but trigger a rescan (upstream's 300 s).
USAGE_MAX_AGE_SECONDS = 300.0
# A first write waits this long for the first scan; past it the write is let through.
FIRST_SCAN_WAIT_SECONDS = 5.0
# After writes, a rescan replaces the running estimate (deltas shrink, overwrites replace).
RESCAN_DELAY_SECONDS = 10.0


class BucketFrozen(Exception):
    def __init__(self, bucket: str) -> None:
        super().__init__("Bucket is frozen (quota = 0)")
        self.bucket = bucket


class QuotaExceeded(Exception):
    def __init__(self, bucket: str, used: int, quota: int) -> None:
        super().__init__(f"Bucket quota exceeded: {used / MIB:.1f} MB used of {quota / MIB:.1f} MB limit")
        self.bucket = bucket
        self.used = used
        self.quota = quota


@dataclass
class _Usage:
    stored_bytes: int
    measured_at: float


class QuotaGuard:
    def __init__(
        self,
        buckets: Mapping[str, BucketPolicyConfig],
        measure: Callable[[str], Awaitable[int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._quotas = {
            name.lower(): policy.quota_bytes
            for name, policy in buckets.items()
            if policy.quota_bytes is not None
        }
        self._measure = measure
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._scans: dict[str, asyncio.Task[None]] = {}
        self._rescans: dict[str, asyncio.TimerHandle] = {}

    def quota(self, bucket: str) -> int | None:
        return self._quotas.get(bucket)

    def check_mutation(self, bucket: str) -> None:
        """Refuse any change to a frozen bucket (deletes included)."""
        if self._quotas.get(bucket) == 0:
            raise BucketFrozen(bucket)

    async def check_write(self, bucket: str, incoming: int) -> None:
        """Refuse a write of ``incoming`` bytes that would take the bucket over its quota."""
        quota = self._quotas.get(bucket)
        if quota is None:
            return
        if quota == 0:
            raise BucketFrozen(bucket)
        used = await self._current(bucket)
        if used is not None and used + incoming > quota:
            raise QuotaExceeded(bucket, used, quota)

    def record_write(self, bucket: str, stored_bytes: int) -> None:
        if bucket not in self._quotas:
            return
        usage = self._usage.get(bucket)
        if usage is not None:
            usage.stored_bytes += stored_bytes
        self._schedule_rescan(bucket)

    def record_delete(self, bucket: str) -> None:
        if bucket in self._quotas:
            self._schedule_rescan(bucket)

    def usage(self, bucket: str) -> int | None:
        usage = self._usage.get(bucket)
        return None if usage is None else usage.stored_bytes

    async def close(self) -> None:
        for handle in self._rescans.values():
            handle.cancel()
        for task in self._scans.values():
            task.cancel()
        for task in list(self._scans.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _current(self, bucket: str) -> int | None:
        usage = self._usage.get(bucket)
        if usage is not None:
            if self._clock() - usage.measured_at > USAGE_MAX_AGE_SECONDS:
                self._start_scan(bucket)
            return usage.stored_bytes
        task = self._start_scan(bucket)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), FIRST_SCAN_WAIT_SECONDS)
        usage = self._usage.get(bucket)
        return None if usage is None else usage.stored_bytes

    def _start_scan(self, bucket: str) -> asyncio.Task[None]:
        task = self._scans.get(bucket)
        if task is None or task.done():
            task = asyncio.create_task(self._scan(bucket))
            self._scans[bucket] = task
        return task

    async def _scan(self, bucket: str) -> None:
        started = self._clock()
        try:
            stored = await self._measure(bucket)
        except Exception as exc:  # noqa: BLE001 - a failed scan keeps the last estimate
            log.warning("quota scan of bucket %r failed: %s", bucket, exc)
            return
        self._usage[bucket] = _Usage(stored, started)

    def _schedule_rescan(self, bucket: str) -> None:
        if bucket in self._rescans:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._rescans.pop(bucket, None)
            self._start_scan(bucket)

        self._rescans[bucket] = loop.call_later(RESCAN_DELAY_SECONDS, fire)
