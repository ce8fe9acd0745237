"""Count the opens of one file by any process (Linux inotify), for tests that check how often a
server subprocess opens a stored object."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from types import TracebackType

_IN_OPEN = 0x20
_IN_CLOSE_NOWRITE = 0x10
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_libc = ctypes.CDLL(None, use_errno=True)


class FileOpens:
    """Opens of ``path`` (its inode at construction) since the last :meth:`take`.

    Closes are watched too, although not counted: inotify merges identical events that follow
    each other unread, so with opens alone two opens in a row would count as one. (Two opens
    that overlap still count as one; a reader that opens a file twice at once is not caught.)
    """

    def __init__(self, path: Path) -> None:
        self._fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_OPEN | _IN_CLOSE_NOWRITE) < 0:
            code = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(code, f"inotify_add_watch failed for {path}")

    def take(self) -> int:
        opens = 0
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return opens
            pos = 0
            while pos < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                opens += bool(mask & _IN_OPEN)
                pos += _EVENT.size + length

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FileOpens:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
