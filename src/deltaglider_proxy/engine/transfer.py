"""Moving backend bytes to local files and hashing local files — always in worker threads."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

BATCH_BYTES = 4 * 1024 * 1024


async def stream_to_file(stream: AsyncIterator[bytes], path: Path) -> tuple[int, str]:
    """Write ``stream`` to a new file at ``path`` (fsynced); returns (size, sha256 hex)."""
    digest = hashlib.sha256()
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(data: bytes) -> None:
        digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    size = 0
    try:
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in stream:
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= BATCH_BYTES:
                await asyncio.to_thread(write, b"".join(pending))
                size += pending_size
                pending, pending_size = [], 0
        if pending:
            await asyncio.to_thread(write, b"".join(pending))
            size += pending_size
        await asyncio.to_thread(os.fsync, fd)
    except BaseException:
        os.close(fd)
        await asyncio.to_thread(path.unlink, True)
        raise
    os.close(fd)
    return size, digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Blocking: SHA-256 of a file, read in bounded pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(BATCH_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
