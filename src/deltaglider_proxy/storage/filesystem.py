"""Filesystem backend: one directory tree per bucket, metadata in an xattr (storage.md §1.3, §10.1).

Layout: ``<root>/<bucket>/deltaspaces/<segment>/.../<segment>``, each segment mapped to an
on-disk name by :mod:`fs_names`. Unlike upstream every S3-legal name is storable: an object
whose path is also a directory lives inside it as ``.dg.self``, empty segments are
``.dg.empty``, and over-long or reserved segments are hashed with the real name in an xattr.

Safety rules this module keeps:

* Below ``deltaspaces/`` every open is relative to a directory fd and refuses symlinks
  (``O_NOFOLLOW`` per component, or ``openat2(RESOLVE_NO_SYMLINKS)`` for a run of encoded
  components, which never contain ``/``, ``.`` or ``..``). So no name can climb out of the
  bucket, a symlink placed in the tree is never followed, and keys that expand to more than
  PATH_MAX bytes on disk still work.
* Writes go to a ``.dg.tmp.*`` file beside the target, get their xattrs, are fsynced and then
  renamed over the target, so readers see the old or the new object, never a torn one.
* Turning a file ``P/a`` into a directory (when ``P/a/b`` is written) swaps a prepared directory
  holding a hard link of the file in with ``renameat2(RENAME_EXCHANGE)``, so ``P/a`` stays
  readable throughout.
* Every blocking call runs in a worker thread; one thread hop does one batch of work.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from itertools import groupby
from pathlib import Path
from typing import ParamSpec, TypeVar

from deltaglider_proxy.storage.base import (
    BucketInfo,
    BucketNotEmpty,
    BucketNotFound,
    CommonPrefix,
    DiskFull,
    InvalidObjectName,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoredObject,
    logical_sort_key,
)
from deltaglider_proxy.storage.fs_names import (
    NAME_XATTR,
    SELF_NAME,
    decode_segment,
    encode_segment,
    is_hashed,
    is_temp,
    new_temp_name,
    segment_bytes,
    split_name,
)
from deltaglider_proxy.storage.local_files import PinnedFile
from deltaglider_proxy.storage.metadata import TOOL, FileMetadata, from_xattr_json, to_xattr_json, utcnow

_log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

CHUNK_SIZE = 1024 * 1024
METADATA_XATTR = "user.dg.metadata"
DELTASPACES = "deltaspaces"
PROBE_NAME = ".dg_xattr_probe"
RENAME_PROBE_NAME = ".dg_rename_probe"
# Beside the buckets (which never start with "."): the tree lock's cross-process half.
LOCK_NAME = ".dg.lock"
PROBE_VALUE = b"xattr_test_ok"
# A temp entry this old belongs to no live write (a write holds its temp for seconds); younger
# ones may belong to another process still running on the same data dir (rolling restart).
TEMP_MAX_AGE_SECONDS = 3600.0
DIRECTORY_CONTENT_TYPE = "application/x-directory"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# Attempts for a step that loses a race with a concurrent delete pruning the directory it
# works in; each retry starts from a fresh lookup, so a handful always suffices in practice.
_RETRIES = 16
# Listing entries whose stat/xattr work is batched into one thread hop: start small (a caller
# may want one entry) and grow to about a page.
_FIRST_BATCH = 64
_MAX_BATCH = 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO placed in the tree must not hang a worker; no effect on files.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_OPENAT2_SYSCALL = 437  # the same number on every Linux architecture (added in 5.6)
_RESOLVE_NO_SYMLINKS = 0x04
# Bytes of a relative path handed to one openat2, below PATH_MAX (4096 with the NUL).
_PATH_CHUNK_BYTES = 4000
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


# Cleared for good when the kernel is older than 5.6 or a seccomp filter refuses openat2; paths
# are then opened one component at a time (same result, more syscalls).
_openat2_usable = True


def _openat2_dir(path: str, dir_fd: int) -> int:
    """openat2(2) with RESOLVE_NO_SYMLINKS: a multi-component path in one syscall that still
    refuses every symlink on the way."""
    how = _OpenHow(flags=_DIR_FLAGS, mode=0, resolve=_RESOLVE_NO_SYMLINKS)
    size = ctypes.c_size_t(ctypes.sizeof(how))
    fd = int(
        _libc.syscall(
            ctypes.c_long(_OPENAT2_SYSCALL), ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how), size
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    try:
        _renameat2(src_dir_fd, src, dst_dir_fd, dst, _RENAME_NOREPLACE)
    except FileExistsError:
        raise ObjectExists(dst) from None


def _renameat2(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, flags: int) -> None:
    """Linux renameat2(2); Python's os module does not expose its flags."""
    func = getattr(_libc, "renameat2", None)
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    result = func(
        ctypes.c_int(src_dir_fd),
        os.fsencode(src),
        ctypes.c_int(dst_dir_fd),
        os.fsencode(dst),
        ctypes.c_uint(flags),
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


# ---------------------------------------------------------------------------------------------
# Small fd helpers (all blocking; called from worker threads)
# ---------------------------------------------------------------------------------------------


def _is_absent(exc: OSError) -> bool:
    return exc.errno in _ABSENT


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _path_chunks(parts: Sequence[str]) -> Iterator[list[str]]:
    """``parts`` cut into runs whose joined path stays below PATH_MAX."""
    chunk: list[str] = []
    size = 0
    for part in parts:
        length = len(part.encode()) + 1
        if chunk and size + length > _PATH_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(part)
        size += length
    if chunk:
        yield chunk


def _open_dirs(parts: Sequence[str], dir_fd: int) -> int:
    """Open the directory ``parts`` (one path-length chunk) below ``dir_fd``, no symlinks."""
    global _openat2_usable
    if len(parts) > 1 and _openat2_usable:
        try:
            return _openat2_dir("/".join(parts), dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_usable = False
    fd = _open_dir(parts[0], dir_fd)
    for part in parts[1:]:
        try:
            inner = _open_dir(part, fd)
        finally:
            os.close(fd)
        fd = inner
    return fd


def _walk(stack: ExitStack, base_fd: int, parts: Sequence[str]) -> int | None:
    """The directory ``parts`` below ``base_fd``, or None when some part is missing or no dir.

    Deep keys are opened a path chunk per syscall, so even a 1024-level key costs a few.
    """
    fd = base_fd
    for chunk in _path_chunks(parts):
        try:
            fd = _open_dirs(chunk, fd)
        except OSError as exc:
            if _is_absent(exc):
                return None
            raise
        stack.callback(os.close, fd)
    return fd


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if _is_absent(exc):
            return None
        raise


def _open_any(name: str, dir_fd: int) -> tuple[int, os.stat_result] | None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if _is_absent(exc):
            return None
        raise
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _open_regular(name: str, dir_fd: int) -> tuple[int, os.stat_result] | None:
    """Open the object stored under ``name``: the file itself, or ``name/.dg.self``.

    Opening first and checking the type on the fd (not lstat-then-open) keeps this right while
    a writer converts the file into a directory between the two steps.
    """
    opened = _open_any(name, dir_fd)
    if opened is not None and stat.S_ISDIR(opened[1].st_mode):
        directory_fd = opened[0]
        try:
            opened = _open_any(SELF_NAME, directory_fd)
        finally:
            os.close(directory_fd)
    if opened is not None and not stat.S_ISREG(opened[1].st_mode):
        os.close(opened[0])
        return None
    return opened


def _read_name_xattr(name: str, dir_fd: int) -> bytes | None:
    """The real segment of a hashed entry (None when unreadable: then it is not an object)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if _is_absent(exc):
            return None
        raise
    try:
        return os.getxattr(fd, NAME_XATTR)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise
    finally:
        os.close(fd)


def _read_record(fd: int) -> FileMetadata | None:
    """The record of an open object; None for an unmanaged file. MetadataError propagates."""
    try:
        raw = os.getxattr(fd, METADATA_XATTR)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise
    return from_xattr_json(raw)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _iter_tree(
    base_fd: int, descend: Callable[[int, os.DirEntry[str]], bool]
) -> Iterator[tuple[tuple[str, ...], int, list[os.DirEntry[str]]]]:
    """Pre-order walk below ``base_fd``: (parts, dir fd, entries) per directory.

    An explicit stack, and each directory reopened from ``base_fd``, keeps both the recursion
    depth and the number of open fds bounded however deep keys nest. Symlinks are never
    followed. The fd is valid only until the generator resumes.
    """
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        with ExitStack() as stack:
            fd = _walk(stack, base_fd, parts)
            if fd is None:
                continue  # removed since its parent was read
            with os.scandir(fd) as scan:
                entries = list(scan)
            yield parts, fd, entries
            pending.extend(
                (*parts, entry.name)
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and descend(fd, entry)
            )


def _not_temp(_dir_fd: int, entry: os.DirEntry[str]) -> bool:
    return not is_temp(entry.name)


def _remove_tree(parent_fd: int, name: str, *, keep_data: bool) -> None:
    """Remove directory ``name``; temp entries go, any other file raises BucketNotEmpty if
    ``keep_data`` (so a bucket delete never destroys a byte it was not sure about)."""
    with ExitStack() as stack:
        top = _open_dir(name, parent_fd)
        stack.callback(os.close, top)
        visited: list[tuple[str, ...]] = []
        for parts, fd, entries in _iter_tree(top, _not_temp):
            visited.append(parts)
            for entry in entries:
                _remove_entry(fd, entry, keep_data=keep_data)
        for parts in reversed(visited[1:]):  # children were visited after their parents
            with ExitStack() as inner:
                parent = _walk(inner, top, parts[:-1])
                if parent is not None:
                    _rmdir(parts[-1], parent, keep_data=keep_data)
    _rmdir(name, parent_fd, keep_data=keep_data)


def _remove_entry(dir_fd: int, entry: os.DirEntry[str], *, keep_data: bool) -> None:
    if is_temp(entry.name):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(dir_fd, entry.name, keep_data=False)
        else:
            _unlink_quietly(entry.name, dir_fd)
    elif entry.is_dir(follow_symlinks=False):
        return  # visited on its own
    elif keep_data:
        raise BucketNotEmpty(f"bucket holds data ({entry.name!r})")
    else:
        _unlink_quietly(entry.name, dir_fd)


def _rmdir(name: str, dir_fd: int, *, keep_data: bool) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if keep_data and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise BucketNotEmpty("an object was written while the bucket was being deleted") from exc
        raise


def _modified(info: os.stat_result) -> datetime:
    return datetime.fromtimestamp(info.st_mtime, tz=UTC)


def _stored(name: str, info: os.stat_result, record: FileMetadata | None) -> StoredObject:
    return StoredObject(
        name=name,
        size=info.st_size,
        modified=_modified(info),
        record=record,
        etag=record.etag if record is not None else None,
        content_type=record.content_type if record is not None else None,
        version=_version(info),
    )


def _version(info: os.stat_result) -> str:
    # Every write renames a new file into place, so a new version is a new inode; the mtime
    # guards against an inode number being reused after a delete.
    return f"{info.st_dev}:{info.st_ino}:{info.st_mtime_ns}"


class _TreeLock:
    """Serialises the steps that must not interleave (see FilesystemBackend.__init__), within
    this process (a mutex) and across processes sharing the root (an ``flock`` on
    ``<root>/.dg.lock``: ``rotate-keys`` rewrites objects while the server runs)."""

    def __init__(self, root: Path) -> None:
        self._path = root / LOCK_NAME
        self._mutex = threading.Lock()
        self._fd = -1

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()


def _unloaded(name: str, info: os.stat_result) -> StoredObject:
    return StoredObject(
        name=name, size=info.st_size, modified=_modified(info), record_loaded=False, version=_version(info)
    )


def _storage_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"disk full: {exc}")
    return StorageError(f"filesystem error: {exc}")


def _check_bucket(bucket: str) -> None:
    """Buckets are validated at the edge; refuse anything that is not one plain directory name."""
    if not bucket or bucket.startswith(".") or "/" in bucket or "\x00" in bucket:
        raise InvalidObjectName(f"invalid bucket name {bucket!r}")


def _marker_record() -> FileMetadata:
    return FileMetadata(
        tool=TOOL,
        original_name="",
        file_sha256=EMPTY_SHA256,
        file_size=0,
        md5=EMPTY_MD5,
        created_at=utcnow(),
        note="passthrough",
        content_type=DIRECTORY_CONTENT_TYPE,
    )


def _xattr_error(root: Path) -> StorageError:
    return StorageError(
        f"storage root {root} is on a filesystem without user extended attribute (xattr) support; "
        "DeltaGlider keeps object metadata in the user.dg.metadata xattr. Use ext4, XFS, Btrfs or ZFS "
        "(tmpfs, FAT32/exFAT and some NFS or overlay mounts are not suitable)."
    )


# ---------------------------------------------------------------------------------------------
# Listing items
# ---------------------------------------------------------------------------------------------


class _Kind(Enum):
    OBJECT = "object"  # an entry to stat (it may have gone, or be a dir without .dg.self)
    SUBTREE = "subtree"  # a directory to expand in place
    PREFIX = "prefix"  # a delimiter roll-up, produced if the directory holds any object


@dataclass(frozen=True)
class _Item:
    key: bytes  # position in logical_sort_key order
    tiebreak: bytes  # orders x before x.delta when both sort as x
    kind: _Kind
    name: str  # object name, or "<dir path>/" for SUBTREE and PREFIX
    parts: tuple[str, ...]  # on-disk dir: holding the object, or the directory itself
    disk: str = ""  # OBJECT: on-disk name inside ``parts`` (may be "<dir>/.dg.self")


@dataclass(frozen=True)
class _ListScope:
    """Where a listing starts: the directory holding the prefix's last ``/`` and the filter."""

    parts: tuple[str, ...]
    logical: str  # object-name prefix of that directory ("" or "a/b/")
    remainder: str  # what entry names there must start with


def _list_scope(prefix: str) -> _ListScope | None:
    """None when no storable name can start with ``prefix`` (so nothing is read)."""
    if "\x00" in prefix or prefix.startswith("/"):
        return None
    if "/" not in prefix:
        return _ListScope((), "", prefix)
    head, remainder = prefix.rsplit("/", 1)
    segments = head.split("/")
    if any(segment in (".", "..") for segment in segments):
        return None
    return _ListScope(tuple(encode_segment(s) for s in segments), head + "/", remainder)


def _name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def _after(key: bytes, after: bytes | None) -> bool:
    return after is None or key > after


def _subtree_needed(key: bytes, after: bytes | None) -> bool:
    """Whether a directory whose names all start with ``key`` can hold a name > ``after``."""
    return after is None or key > after or after.startswith(key)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class FilesystemBackend:
    """Backend storing buckets as directories under ``root`` (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        # Serialises, within this process, the steps that must not interleave: converting a file
        # into a directory, publishing a write (resolve target + rename) and unlinking an
        # object. Without it a write landing between a conversion's link and exchange would be
        # lost, or a delete between them undone. Each holder keeps it for a few syscalls.
        self._tree_lock = _TreeLock(self._root)

    @property
    def root(self) -> Path:
        return self._root

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the root, check xattr and renameat2 support, sweep stale temp files."""
        await self._run(self._probe)
        await self.sweep_temp_files()

    async def close(self) -> None:
        """Nothing to release: an fd lives as long as the call or the pinned read that opened it."""

    async def sweep_temp_files(self, max_age: float = TEMP_MAX_AGE_SECONDS) -> int:
        """Remove ``.dg.tmp.*`` entries older than ``max_age`` seconds; returns how many."""
        return await self._run(self._sweep, max_age)

    # -- buckets ----------------------------------------------------------------------------------

    async def list_buckets(self) -> list[BucketInfo]:
        return await self._run(self._list_buckets)

    async def bucket_exists(self, bucket: str) -> bool:
        _check_bucket(bucket)
        return await self._run(os.path.isdir, self._root / bucket)

    async def create_bucket(self, bucket: str) -> bool:
        _check_bucket(bucket)
        return await self._run(self._create_bucket, bucket)

    async def delete_bucket(self, bucket: str) -> None:
        _check_bucket(bucket)
        await self._run(self._delete_bucket, bucket)

    async def usage_bytes(self, bucket: str) -> int:
        _check_bucket(bucket)
        return await self._run(self._usage, bucket)

    # -- objects ----------------------------------------------------------------------------------

    async def head(self, bucket: str, name: str) -> StoredObject | None:
        _check_bucket(bucket)
        return await self._run(self._head, bucket, name, split_name(name))

    async def read(
        self, bucket: str, name: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes [start, end): one ≤ 1 MiB pread per thread hop from one open fd.

        The fd pins the inode current at open, so a concurrent overwrite (a rename) cannot tear
        the stream.
        """
        pinned = await self._pin(bucket, name, with_record=False)
        try:
            async for chunk in pinned.stream(start, end):
                yield chunk
        finally:
            pinned.close()

    async def open_pinned(self, bucket: str, name: str, *, head_bytes: int = 0) -> PinnedFile:
        """The object opened once, for a reader that needs its record and bytes to agree.

        One thread hop opens the file and reads, through that fd, its size, its record and its
        first ``head_bytes`` bytes; the caller reads the body through the same fd and must
        :meth:`PinnedFile.close` it. ObjectNotFound when absent, like :meth:`read`.
        """
        return await self._pin(bucket, name, with_record=True, head_bytes=head_bytes)

    async def _pin(self, bucket: str, name: str, *, with_record: bool, head_bytes: int = 0) -> PinnedFile:
        """Open the object (see :meth:`open_pinned`). Never leaks the fd, even when the caller
        is cancelled while the open runs in its thread."""
        _check_bucket(bucket)
        segments = split_name(name)
        opened = asyncio.get_running_loop().run_in_executor(
            None, self._open_pinned, bucket, name, segments, with_record, head_bytes
        )
        try:
            pinned = await asyncio.shield(opened)
        except asyncio.CancelledError:
            opened.add_done_callback(_close_opened)
            raise
        except OSError as exc:
            raise _storage_error(exc) from exc
        if pinned is None:
            raise ObjectNotFound(name)
        return pinned

    async def write(
        self,
        bucket: str,
        name: str,
        source: Path,
        record: FileMetadata,
        *,
        move: bool = False,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> StoredObject:
        _check_bucket(bucket)
        segments = split_name(name)
        metadata = to_xattr_json(record)
        info = await self._run(self._write, bucket, segments, source, metadata, move, if_absent, if_match)
        return _stored(name, info, record)

    async def write_directory_marker(self, bucket: str, name: str) -> StoredObject:
        _check_bucket(bucket)
        if not name.endswith("/"):
            raise InvalidObjectName(f"a directory marker name ends with '/': {name!r}")
        segments = split_name(name)
        record = _marker_record()
        info = await self._run(self._write, bucket, segments, None, to_xattr_json(record), False, False)
        return _stored(name, info, record)

    async def delete(self, bucket: str, name: str) -> bool:
        _check_bucket(bucket)
        return await self._run(self._delete, bucket, split_name(name))

    async def _run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work in a worker thread; OS errors become the store's own errors."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except OSError as exc:
            raise _storage_error(exc) from exc

    # -- blocking work: lifecycle -------------------------------------------------------------

    def _probe(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            root_fd = self._open_root(stack)
            _clear_probes(root_fd)  # left by a start that died mid-probe
            try:
                self._probe_xattr(root_fd)
                self._probe_rename(root_fd)
            finally:
                _clear_probes(root_fd)

    def _probe_xattr(self, root_fd: int) -> None:
        fd = os.open(PROBE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=root_fd)
        try:
            os.setxattr(fd, METADATA_XATTR, PROBE_VALUE)
            if os.getxattr(fd, METADATA_XATTR) != PROBE_VALUE:
                raise OSError(errno.EIO, "xattr read back a different value")
        except OSError as exc:
            raise _xattr_error(self._root) from exc
        finally:
            os.close(fd)

    def _probe_rename(self, root_fd: int) -> None:
        """Converting a file into a directory needs renameat2(RENAME_EXCHANGE): check it now
        rather than failing the first write of a nested key."""
        os.mkdir(RENAME_PROBE_NAME, dir_fd=root_fd)
        try:
            _renameat2(root_fd, PROBE_NAME, root_fd, RENAME_PROBE_NAME, _RENAME_EXCHANGE)
        except OSError as exc:
            raise StorageError(
                f"storage root {self._root} is on a filesystem without renameat2(RENAME_EXCHANGE) "
                f"support ({exc}); use ext4, XFS, Btrfs or ZFS"
            ) from exc

    def _sweep(self, max_age: float) -> int:
        cutoff = time.time() - max_age
        removed = 0
        with ExitStack() as stack:
            root_fd = self._open_root(stack)
            for bucket in self._bucket_entries():
                with ExitStack() as inner:
                    try:
                        bucket_fd = os.open(
                            bucket.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd
                        )
                    except FileNotFoundError:
                        continue
                    inner.callback(os.close, bucket_fd)
                    for _parts, fd, entries in _iter_tree(bucket_fd, _not_temp):
                        removed += sum(
                            _sweep_entry(fd, entry, cutoff) for entry in entries if is_temp(entry.name)
                        )
        return removed

    # -- blocking work: buckets ---------------------------------------------------------------

    def _open_root(self, stack: ExitStack) -> int:
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, fd)
        return fd

    def _bucket_entries(self) -> list[os.DirEntry[str]]:
        # Buckets may be symlinks an operator placed; below a bucket nothing is followed.
        with os.scandir(self._root) as scan:
            return [e for e in scan if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]

    def _list_buckets(self) -> list[BucketInfo]:
        buckets = []
        for entry in self._bucket_entries():
            info = entry.stat(follow_symlinks=True)
            created = getattr(info, "st_birthtime", info.st_mtime)
            buckets.append(BucketInfo(name=entry.name, created=datetime.fromtimestamp(created, tz=UTC)))
        return sorted(buckets, key=lambda bucket: bucket.name)

    def _create_bucket(self, bucket: str) -> bool:
        path = self._root / bucket
        try:
            path.mkdir()
            created = True
        except FileExistsError:
            if not path.is_dir():
                raise StorageError(f"{path} exists and is not a directory") from None
            created = False
        (path / DELTASPACES).mkdir(exist_ok=True)
        if created:
            with ExitStack() as stack:
                os.fsync(self._open_root(stack))
        return created

    def _delete_bucket(self, bucket: str) -> None:
        with ExitStack() as stack:
            root_fd = self._open_root(stack)
            if _lstat(bucket, root_fd) is None:
                raise BucketNotFound(bucket)
            _remove_tree(root_fd, bucket, keep_data=True)
            os.fsync(root_fd)

    def _usage(self, bucket: str) -> int:
        total = 0
        with ExitStack() as stack:
            bucket_fd = self._open_bucket(stack, bucket)
            for _parts, _fd, entries in _iter_tree(bucket_fd, lambda _fd, _entry: True):
                total += sum(
                    e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False)
                )
        return total

    def _open_bucket(self, stack: ExitStack, bucket: str) -> int:
        try:
            fd = os.open(self._root / bucket, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BucketNotFound(bucket) from exc
        stack.callback(os.close, fd)
        return fd

    def _open_space(self, stack: ExitStack, bucket: str, *, create: bool = False) -> int | None:
        """The bucket's ``deltaspaces`` dir (BucketNotFound if the bucket is missing); None if
        the bucket has no deltaspaces yet, unless ``create``."""
        bucket_fd = self._open_bucket(stack, bucket)
        try:
            fd = _open_dir(DELTASPACES, bucket_fd)
        except FileNotFoundError:
            if not create:
                return None
            with suppress(FileExistsError):
                os.mkdir(DELTASPACES, dir_fd=bucket_fd)
            fd = _open_dir(DELTASPACES, bucket_fd)
        stack.callback(os.close, fd)
        return fd

    # -- blocking work: reading ---------------------------------------------------------------

    def _open_object(
        self, stack: ExitStack, bucket: str, segments: Sequence[str]
    ) -> tuple[int, os.stat_result] | None:
        """Open an object for reading; the fd is the caller's to close."""
        space_fd = self._open_space(stack, bucket)
        if space_fd is None:
            return None
        parent = _walk(stack, space_fd, [encode_segment(s) for s in segments[:-1]])
        if parent is None:
            return None
        return _open_regular(encode_segment(segments[-1]), parent)

    def _open_pinned(
        self, bucket: str, name: str, segments: Sequence[str], with_record: bool, head_bytes: int
    ) -> PinnedFile | None:
        with ExitStack() as stack:
            opened = self._open_object(stack, bucket, segments)
        if opened is None:
            return None
        fd, info = opened
        try:
            # Record and head come through the fd, not the name: a rename over the object
            # between the open and these reads cannot hand out another object's record.
            stored = _stored(name, info, _read_record(fd)) if with_record else _unloaded(name, info)
            head = os.pread(fd, head_bytes, 0) if head_bytes else b""
        except BaseException:
            os.close(fd)
            raise
        return PinnedFile(fd, stored, head, _storage_error)

    def _head(self, bucket: str, name: str, segments: Sequence[str]) -> StoredObject | None:
        with ExitStack() as stack:
            opened = self._open_object(stack, bucket, segments)
            if opened is None:
                return None
            fd, info = opened
            stack.callback(os.close, fd)
            return _stored(name, info, _read_record(fd))

    # -- blocking work: writing ---------------------------------------------------------------

    def _write(
        self,
        bucket: str,
        segments: Sequence[str],
        source: Path | None,
        metadata: bytes,
        move: bool,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> os.stat_result:
        """Steps: make the parent dirs, fill a temp file beside the target (data, xattrs,
        fsync), rename it over the target, fsync the directory. A concurrent delete may prune
        a directory we just opened (ENOENT); the attempt then starts over."""
        leaf = encode_segment(segments[-1])
        name_value = segment_bytes(segments[-1]) if is_hashed(leaf) else None
        for _attempt in range(_RETRIES):
            with ExitStack() as stack:
                space_fd = self._open_space(stack, bucket, create=True)
                assert space_fd is not None  # create=True
                try:
                    parent_fd = self._make_dirs(stack, space_fd, segments[:-1])
                    temp, info = _fill_temp(parent_fd, source, move, metadata, name_value)
                except FileNotFoundError:
                    if source is not None and not source.exists():
                        raise StorageError(f"write source {source} does not exist") from None
                    continue
                try:
                    target_fd = self._publish(stack, parent_fd, temp, leaf, if_absent, if_match)
                except BaseException:
                    _unlink_quietly(temp, parent_fd)
                    raise
                os.fsync(target_fd)
                if move and source is not None:
                    source.unlink(missing_ok=True)  # copied across filesystems: still ours to drop
                return info
        raise StorageError(f"gave up writing {'/'.join(segments)!r}: its directories kept vanishing")

    def _make_dirs(self, stack: ExitStack, space_fd: int, segments: Sequence[str]) -> int:
        """mkdir -p through the name mapping; a file in the way becomes a ``.dg.self`` dir."""
        fd = space_fd
        for segment in segments:
            fd = self._make_dir(stack, fd, encode_segment(segment), segment)
        return fd

    def _make_dir(self, stack: ExitStack, parent_fd: int, disk: str, segment: str) -> int:
        for _attempt in range(_RETRIES):
            try:
                fd = _open_dir(disk, parent_fd)
            except FileNotFoundError:
                _create_dir(parent_fd, disk, segment)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                self._convert_to_dir(parent_fd, disk, segment)
                continue
            stack.callback(os.close, fd)
            return fd
        raise StorageError(f"could not create directory {disk!r}: it kept changing")

    def _convert_to_dir(self, parent_fd: int, disk: str, segment: str) -> None:
        """Make the object file ``disk`` a directory holding it as ``.dg.self``, atomically:
        a temp dir gets a hard link of the file, then trades places with it."""
        with self._tree_lock:
            info = _lstat(disk, parent_fd)
            if info is None or stat.S_ISDIR(info.st_mode):
                return  # deleted or converted meanwhile; the caller looks again
            if not stat.S_ISREG(info.st_mode):
                raise StorageError(f"{disk!r} is in the way of a directory and is not a regular file")
            temp = new_temp_name()
            os.mkdir(temp, dir_fd=parent_fd)
            try:
                temp_fd = _open_dir(temp, parent_fd)
                try:
                    if is_hashed(disk):
                        os.setxattr(temp_fd, NAME_XATTR, segment_bytes(segment))
                    os.link(disk, SELF_NAME, src_dir_fd=parent_fd, dst_dir_fd=temp_fd, follow_symlinks=False)
                    os.fsync(temp_fd)
                finally:
                    os.close(temp_fd)
                _renameat2(parent_fd, temp, parent_fd, disk, _RENAME_EXCHANGE)
            except BaseException:
                _remove_tree(parent_fd, temp, keep_data=False)
                raise
            os.unlink(temp, dir_fd=parent_fd)  # the old name of the file, now also .dg.self
            os.fsync(parent_fd)

    def _publish(
        self,
        stack: ExitStack,
        parent_fd: int,
        temp: str,
        leaf: str,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> int:
        """Rename the filled temp file over the object; returns the fd of its directory.
        ``if_absent`` makes it create-only (ObjectExists when the object is there), atomic even
        against other processes thanks to RENAME_NOREPLACE. ``if_match`` replaces only that
        version (ObjectChanged otherwise): checked and renamed under the tree lock, which every
        writer and deleter of this root holds for the same steps."""
        with self._tree_lock:
            for _attempt in range(_RETRIES):
                info = _lstat(leaf, parent_fd)
                if if_match is not None:
                    self._check_version(stack, parent_fd, leaf, info, if_match)
                if info is not None and stat.S_ISDIR(info.st_mode):
                    dir_fd = _walk(stack, parent_fd, [leaf])
                    if dir_fd is None:
                        continue
                    try:
                        if if_absent:
                            _rename_noreplace(parent_fd, temp, dir_fd, SELF_NAME)
                        else:
                            os.rename(temp, SELF_NAME, src_dir_fd=parent_fd, dst_dir_fd=dir_fd)
                    except FileNotFoundError:
                        continue  # the directory was pruned meanwhile: it is a plain name again
                    return dir_fd
                try:
                    if if_absent:
                        _rename_noreplace(parent_fd, temp, parent_fd, leaf)
                    else:
                        os.rename(temp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                except ObjectExists:
                    raise
                except OSError as exc:
                    # Another process turned the target into a directory: go into .dg.self.
                    if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                        continue
                    raise
                return parent_fd
        raise StorageError(f"could not publish {leaf!r}: its target kept changing")

    def _check_version(
        self, stack: ExitStack, parent_fd: int, leaf: str, info: os.stat_result | None, expected: str
    ) -> None:
        current = info
        if info is not None and stat.S_ISDIR(info.st_mode):
            dir_fd = _walk(stack, parent_fd, [leaf])
            current = None if dir_fd is None else _lstat(SELF_NAME, dir_fd)
        if current is None or not stat.S_ISREG(current.st_mode) or _version(current) != expected:
            raise ObjectChanged(f"{leaf!r} is no longer the version this write was meant to replace")

    # -- blocking work: deleting --------------------------------------------------------------

    def _delete(self, bucket: str, segments: Sequence[str]) -> bool:
        with ExitStack() as stack:
            space_fd = self._open_space(stack, bucket)
            if space_fd is None:
                return False
            chain: list[tuple[int, str]] = []  # (parent fd, name) of each directory on the path
            fd = space_fd
            for segment in segments[:-1]:
                disk = encode_segment(segment)
                child = _walk(stack, fd, [disk])
                if child is None:
                    return False
                chain.append((fd, disk))
                fd = child
            with self._tree_lock:
                found = _unlink_object(fd, encode_segment(segments[-1]), chain)
            if found:
                _prune(chain)
            return found

    # -- blocking work: listing ---------------------------------------------------------------

    def _read_dir(self, bucket: str, scope: _ListScope, after: bytes | None, rollup: bool) -> list[_Item]:
        """The items of one directory, sorted; stats are left for :meth:`_resolve`."""
        with ExitStack() as stack:
            space_fd = self._open_space(stack, bucket)
            dir_fd = None if space_fd is None else _walk(stack, space_fd, scope.parts)
            if dir_fd is None:
                return []
            with os.scandir(dir_fd) as scan:
                entries = list(scan)
            items: list[_Item] = []
            for entry in entries:
                decoded = _decode_entry(dir_fd, entry)
                if decoded is not None and decoded[0].startswith(scope.remainder):
                    items.extend(_items_for(scope, entry.name, decoded[0], decoded[1], after, rollup))
        items.sort(key=lambda item: (item.key, item.tiebreak))
        return items

    def _resolve(self, bucket: str, batch: Sequence[_Item]) -> list[StoredObject | CommonPrefix | None]:
        """Stat objects / check roll-ups of a run of listing items in one thread hop.

        Items of one directory are adjacent, so the directory is opened once per run of them.
        """
        results: list[StoredObject | CommonPrefix | None] = []
        with ExitStack() as stack:
            space_fd = self._open_space(stack, bucket)
            for parts, items in groupby(batch, key=lambda item: item.parts):
                with ExitStack() as inner:
                    dir_fd = None if space_fd is None else _walk(inner, space_fd, parts)
                    results.extend(_resolve_item(dir_fd, item) for item in items)
        return results

    async def _list_items(
        self, bucket: str, scope: _ListScope, after: bytes | None, rollup: bool
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        pending = list(reversed(await self._run(self._read_dir, bucket, scope, after, rollup)))
        batch_size = _FIRST_BATCH
        while pending:
            item = pending.pop()
            if item.kind is _Kind.SUBTREE:
                inner = _ListScope(item.parts, item.name, "")
                pending.extend(reversed(await self._run(self._read_dir, bucket, inner, after, False)))
                continue
            batch = [item]
            while pending and pending[-1].kind is not _Kind.SUBTREE and len(batch) < batch_size:
                batch.append(pending.pop())
            batch_size = min(batch_size * 2, _MAX_BATCH)
            for result in await self._run(self._resolve, bucket, batch):
                if result is not None:
                    yield result

    async def list(
        self, bucket: str, prefix: str = "", start_after: str = "", delimiter: str | None = None
    ) -> AsyncIterator[StoredObject | CommonPrefix]:
        """Objects under ``prefix`` in logical order (see :meth:`Backend.list`).

        Only ``/`` is supported as delimiter: a roll-up at another character would be computed
        on backend names (``x.delta``) and could not keep logical order.
        """
        _check_bucket(bucket)
        if delimiter not in (None, "/"):
            raise ValueError(f"the filesystem backend lists with delimiter '/' only, not {delimiter!r}")
        scope = _list_scope(prefix)
        if scope is None:
            if not await self.bucket_exists(bucket):
                raise BucketNotFound(bucket)
            return
        after = _name_key(start_after) if start_after else None
        async for entry in self._list_items(bucket, scope, after, delimiter is not None):
            yield entry


# ---------------------------------------------------------------------------------------------
# Blocking helpers of the write, delete and list paths
# ---------------------------------------------------------------------------------------------


def _clear_probes(root_fd: int) -> None:
    for name in (PROBE_NAME, RENAME_PROBE_NAME):
        try:
            os.rmdir(name, dir_fd=root_fd)
        except NotADirectoryError:
            os.unlink(name, dir_fd=root_fd)
        except FileNotFoundError:
            pass


def _close_opened(future: asyncio.Future[PinnedFile | None]) -> None:
    if not future.cancelled() and future.exception() is None:
        pinned = future.result()
        if pinned is not None:
            pinned.close()


def _create_dir(parent_fd: int, disk: str, segment: str) -> None:
    """Create one directory (fine if it appeared meanwhile) and make its entry durable.

    A hashed name is prepared under a temp name with its ``user.dg.name`` and published with
    RENAME_NOREPLACE, so the directory is never visible without its real name.
    """
    if not is_hashed(disk):
        try:
            os.mkdir(disk, dir_fd=parent_fd)
        except FileExistsError:
            return
    else:
        temp = new_temp_name()
        os.mkdir(temp, dir_fd=parent_fd)
        try:
            temp_fd = _open_dir(temp, parent_fd)
            try:
                os.setxattr(temp_fd, NAME_XATTR, segment_bytes(segment))
            finally:
                os.close(temp_fd)
            _renameat2(parent_fd, temp, parent_fd, disk, _RENAME_NOREPLACE)
        except FileExistsError:
            os.rmdir(temp, dir_fd=parent_fd)
            return
        except BaseException:
            os.rmdir(temp, dir_fd=parent_fd)
            raise
    os.fsync(parent_fd)


def _fill_temp(
    parent_fd: int, source: Path | None, move: bool, metadata: bytes, name_value: bytes | None
) -> tuple[str, os.stat_result]:
    """A complete, fsynced temp file in ``parent_fd`` holding the object's bytes and xattrs.

    ``source`` None makes an empty file (directory markers).
    """
    temp = new_temp_name()
    moved = move and source is not None and _move_in(source, parent_fd, temp)
    if moved:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o666, dir_fd=parent_fd)
    try:
        if source is not None and not moved:
            _copy_into(fd, source)
        if name_value is not None:
            os.setxattr(fd, NAME_XATTR, name_value)
        os.setxattr(fd, METADATA_XATTR, metadata)
        os.fsync(fd)
        info = os.fstat(fd)
    except BaseException:
        _unlink_quietly(temp, parent_fd)
        raise
    finally:
        os.close(fd)
    return temp, info


def _move_in(source: Path, dir_fd: int, temp: str) -> bool:
    """Rename ``source`` to ``temp`` in ``dir_fd``; False when it is on another filesystem."""
    try:
        os.rename(source, temp, dst_dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    return True


def _copy_into(fd: int, source: Path) -> None:
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(src, CHUNK_SIZE):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(src)


def _unlink_object(dir_fd: int, leaf: str, chain: list[tuple[int, str]]) -> bool:
    """Unlink the object stored as ``leaf`` (the file, or ``leaf/.dg.self``); False if absent.

    When ``.dg.self`` went, ``leaf`` joins ``chain`` as the first directory to prune.
    """
    info = _lstat(leaf, dir_fd)
    if info is None:
        return False
    if stat.S_ISREG(info.st_mode):
        os.unlink(leaf, dir_fd=dir_fd)
        return True
    if not stat.S_ISDIR(info.st_mode):
        return False
    with ExitStack() as stack:
        inner = _walk(stack, dir_fd, [leaf])
        self_info = None if inner is None else _lstat(SELF_NAME, inner)
        if inner is None or self_info is None or not stat.S_ISREG(self_info.st_mode):
            return False
        os.unlink(SELF_NAME, dir_fd=inner)
    chain.append((dir_fd, leaf))
    return True


def _prune(chain: Sequence[tuple[int, str]]) -> None:
    """Remove now-empty directories upwards, stopping at the first one that is not empty.

    Best effort: any failure (not empty, already gone, a writer's temp file just arrived)
    only means the directory stays, which is always correct.
    """
    for parent_fd, name in reversed(chain):
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError:
            return


def _sweep_entry(dir_fd: int, entry: os.DirEntry[str], cutoff: float) -> int:
    """Remove a temp entry last touched before ``cutoff``; 1 when removed.

    Failures are logged, not raised: a leftover temp entry is harmless (never read or listed)
    and must not stop the proxy from starting.
    """
    try:
        info = entry.stat(follow_symlinks=False)
        # ctime moves on rename and xattr changes too, so a moved-in upload counts as fresh.
        if max(info.st_mtime, info.st_ctime) > cutoff:
            return 0
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(dir_fd, entry.name, keep_data=False)
        else:
            _unlink_quietly(entry.name, dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        _log.warning("could not remove stale temp entry %r: %s", entry.name, exc)
        return 0
    return 1


def _decode_entry(dir_fd: int, entry: os.DirEntry[str]) -> tuple[str, bool] | None:
    """(segment, is_dir) of a directory entry that is part of an object name, else None.

    Symlinks, special files, temp files, ``.dg.self`` and names we could not have written are
    not objects.
    """
    is_dir = entry.is_dir(follow_symlinks=False)
    if not is_dir and not entry.is_file(follow_symlinks=False):
        return None
    stored = _read_name_xattr(entry.name, dir_fd) if is_hashed(entry.name) else None
    segment = decode_segment(entry.name, stored)
    return None if segment is None else (segment, is_dir)


def _items_for(
    scope: _ListScope, disk: str, segment: str, is_dir: bool, after: bytes | None, rollup: bool
) -> list[_Item]:
    """Listing items of one entry: an object for a file; for a directory its possible
    ``.dg.self`` object plus the subtree (or, with a delimiter, the roll-up)."""
    name = scope.logical + segment
    key = logical_sort_key(name)
    items = []
    if _after(key, after):
        held_as = f"{disk}/{SELF_NAME}" if is_dir else disk
        items.append(_Item(key, _name_key(name), _Kind.OBJECT, name, scope.parts, held_as))
    if is_dir:
        below = name + "/"
        below_key = _name_key(below)
        parts = (*scope.parts, disk)
        if rollup and _after(below_key, after):
            items.append(_Item(below_key, below_key, _Kind.PREFIX, below, parts))
        elif not rollup and _subtree_needed(below_key, after):
            items.append(_Item(below_key, below_key, _Kind.SUBTREE, below, parts))
    return items


def _resolve_item(dir_fd: int | None, item: _Item) -> StoredObject | CommonPrefix | None:
    """The listing entry for ``item`` (``dir_fd`` = its ``parts``), None if there is none now."""
    if dir_fd is None:
        return None
    if item.kind is _Kind.PREFIX:
        return CommonPrefix(item.name) if _holds_object(dir_fd) else None
    info = _lstat(item.disk, dir_fd)
    if info is None or not stat.S_ISREG(info.st_mode):
        return None  # deleted since the directory was read, or a directory without .dg.self
    return _unloaded(item.name, info)


def _holds_object(dir_fd: int) -> bool:
    """Whether any object's name runs through this directory (its own ``.dg.self`` is the
    object named by the directory itself, which a roll-up of ``dir/`` does not contain)."""
    for parts, fd, entries in _iter_tree(dir_fd, lambda fd, entry: _decode_entry(fd, entry) is not None):
        for entry in entries:
            if parts and entry.name == SELF_NAME and entry.is_file(follow_symlinks=False):
                return True
            decoded = _decode_entry(fd, entry)
            if decoded is not None and not decoded[1]:
                return True
    return False
