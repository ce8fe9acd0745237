"""Reading local files (spool, decrypted temp files) as async byte streams, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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
