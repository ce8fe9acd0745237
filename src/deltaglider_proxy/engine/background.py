"""Background delta encoding: objects put into a deltaspace that already has a reference are
stored as-is at once (the PUT answers at passthrough speed) and re-encoded here, one at a time.

Jobs are small JSON files in the state directory, so a restart resumes the queue. Losing a job
(e.g. a power cut before its file reached the disk) costs only savings: the object stays a
correct passthrough object. A job whose object was overwritten or deleted meanwhile is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from deltaglider_proxy.engine.codec import CodecBusy
from deltaglider_proxy.engine.keys import parse_key
from deltaglider_proxy.engine.store import DeltaStore
from deltaglider_proxy.storage.metadata import FileMetadata, from_xattr_json, to_xattr_json

log = logging.getLogger(__name__)
BUSY_BACKOFF_SECONDS = 1.0
FAILURE_BACKOFF_SECONDS = 5.0


@dataclass(frozen=True)
class Job:
    path: Path
    bucket: str
    key: str
    record: FileMetadata


class BackgroundEncoder:
    def __init__(self, store: DeltaStore, directory: Path) -> None:
        self.store = store
        self.directory = directory
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.outcomes: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        jobs = await asyncio.to_thread(self._load)
        self._queue.extend(jobs)
        if jobs:
            log.info("resuming %d background delta encodes", len(jobs))
        self._task = asyncio.create_task(self._run(), name="background-delta-encoder")

    def _load(self) -> list[Job]:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, Job]] = []
        for path in self.directory.glob("*.json"):
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                record = from_xattr_json(doc["record"].encode())
                found.append((path.stat().st_mtime, Job(path, doc["bucket"], doc["key"], record)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("dropping unreadable background job %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
        for leftover in self.directory.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        return [job for _, job in sorted(found, key=lambda item: item[0])]

    async def submit(self, bucket: str, key: str, record: FileMetadata) -> None:
        path = self.directory / f"{uuid.uuid4().hex}.json"
        doc = {"bucket": bucket, "key": key, "record": to_xattr_json(record).decode()}
        await asyncio.to_thread(_write_atomically, path, json.dumps(doc).encode())
        self._queue.append(Job(path, bucket, key, record))
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._queue[0]
            outcome: str
            try:
                outcome = await self.store.convert(job.bucket, parse_key(job.key), job.record)
            except CodecBusy:
                # Foreground requests have the codec's slots; try again shortly.
                await asyncio.sleep(BUSY_BACKOFF_SECONDS)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background delta encode of %s/%s failed", job.bucket, job.key)
                outcome = "failed"
                await asyncio.sleep(FAILURE_BACKOFF_SECONDS)
            self._queue.popleft()
            await asyncio.to_thread(job.path.unlink, True)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            log.debug("background delta encode of %s/%s: %s", job.bucket, job.key, outcome)


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    with open(temp, "wb") as handle:
        handle.write(data)
    os.replace(temp, path)
