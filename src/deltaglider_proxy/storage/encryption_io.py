"""Blocking file work and stream plumbing of the encryption wrapper (storage/encrypted.py).

The blocking functions run in worker threads; the async helpers move bytes between backend
streams, AES and files in bounded pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from deltaglider_proxy.storage import encryption_format as ef
from deltaglider_proxy.storage.local_files import PinnedFile

# Ciphertext is handed to AES in pieces of about this size: big enough that the thread hop is
# noise next to the AES work, small enough that a request holds a few MiB at most.
BATCH_BYTES = 1024 * 1024
# Frames per read of a local file, and per piece sent (about BATCH_BYTES). Measured through the
# proxy: neither 8 nor 32 is faster, and 64 pays for fresh 4 MiB buffers.
BATCH_FRAMES = 16
KEY_CHECK_TEXT = b"deltaglider-proxy key check"


def encrypt_file(key: bytes, source: Path, target: Path) -> int:
    """Write the chunked encryption of ``source`` to the new file ``target``; returns the
    plaintext size. Not fsynced here: the backend that takes the file makes it durable (the
    filesystem backend fsyncs what it renames into place; the S3 backend only reads it)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        sealer = SealingWriter(target, key, "", size)  # the caller stamps the key id
        try:
            while chunk := os.read(src, BATCH_BYTES):
                sealer.update(chunk)
            sealer.finish()
        except BaseException:
            sealer.discard()
            raise
    finally:
        os.close(src)
    return size


class SealingWriter:
    """Encrypts a body of known size into a new private file as its pieces arrive.

    The :class:`~deltaglider_proxy.storage.base.SealedBody` of encrypting backends: the spool
    feeds it each batch in a worker thread instead of writing the plaintext, so a body that is
    stored as it is gets written to disk once, as ciphertext. The file is created by the first
    call (in that thread, not on the event loop). Sealed with ``key_id``, to be handed back to
    the wrapper that made it.
    """

    def __init__(self, path: Path, key: bytes, key_id: str, size: int) -> None:
        self.path = path
        self.key_id = key_id
        self.size = size
        self.finished = False
        self._encryptor = ef.ChunkedEncryptor(key, size)
        self._fd = -1
        self._discarded = False
        # discard() may come from the event loop while a batch is being sealed in a thread.
        self._lock = threading.Lock()

    def update(self, data: bytes, /) -> None:
        with self._lock:
            write_all(self._open(), self._encryptor.update(data))

    def finish(self) -> None:
        with self._lock:
            fd = self._open()
            write_all(fd, self._encryptor.finish())
            os.close(fd)
            self._fd = -1
            self.finished = True

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self.path.unlink(missing_ok=True)

    def _open(self) -> int:
        if self._discarded or self.finished:
            raise ef.EncryptionError("sealed body used after it was finished or discarded")
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return self._fd


def write_all(fd: int, pieces: list[bytes]) -> None:
    # Frame-sized pieces go out in one writev; a short write resumes where it stopped.
    while pieces:
        written = os.writev(fd, pieces)
        while pieces and written >= len(pieces[0]):
            written -= len(pieces[0])
            pieces = pieces[1:]
        if pieces and written:
            pieces = [pieces[0][written:], *pieces[1:]]


def decrypt_single_shot_file(key: bytes, source: Path, target: Path) -> None:
    """Authenticate and decrypt an ``aes-256-gcm-v1`` blob file to ``target`` (see
    :func:`decrypt_single_shot_from`)."""
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        decrypt_single_shot_from(fd, key, os.fstat(fd).st_size, target)
    finally:
        os.close(fd)


def decrypt_single_shot_from(fd: int, key: bytes, size: int, target: Path) -> None:
    """Authenticate and decrypt the ``size``-byte ``aes-256-gcm-v1`` blob open at ``fd`` to
    ``target`` (streaming GCM, so memory stays bounded; positional reads, so ``fd`` may be
    shared; ``target`` is removed unless the tag verifies)."""
    if size < ef.SINGLE_SHOT_OVERHEAD:
        raise ef.MalformedCiphertext(
            f"encrypted object is {size} bytes; the {ef.MARKER_SINGLE_SHOT} format needs at least "
            f"{ef.SINGLE_SHOT_OVERHEAD}"
        )
    iv = os.pread(fd, ef.IV_SIZE, 0)
    tag = os.pread(fd, ef.TAG_SIZE, size - ef.TAG_SIZE)
    if len(iv) + len(tag) < ef.IV_SIZE + ef.TAG_SIZE:
        raise _single_shot_truncated(size)
    decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
    position, stop = ef.IV_SIZE, size - ef.TAG_SIZE
    try:
        with open(target, "xb") as dst:
            while position < stop:
                chunk = os.pread(fd, min(BATCH_BYTES, stop - position), position)
                if not chunk:  # cut short underneath us: the tag can never verify
                    raise _single_shot_truncated(size)
                position += len(chunk)
                dst.write(decryptor.update(chunk))
            decryptor.finalize()
    except InvalidTag:
        target.unlink(missing_ok=True)
        raise ef.DecryptionError(ef.DECRYPTION_FAILED) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _single_shot_truncated(size: int) -> ef.MalformedCiphertext:
    return ef.MalformedCiphertext(f"{ef.MARKER_SINGLE_SHOT} object ended before the {size} bytes it had")


def check_key(path: Path, key: bytes) -> bool:
    """Whether ``key`` opens the known text sealed at ``path``; seals it there on first use."""
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        temp = path.with_suffix(".tmp")
        temp.write_bytes(ef.encrypt_chunked(key, KEY_CHECK_TEXT))
        os.replace(temp, path)
        return True
    try:
        return ef.decrypt_chunked(key, sealed, len(KEY_CHECK_TEXT)) == KEY_CHECK_TEXT
    except ef.EncryptionError:
        return False


async def batched(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending: list[bytes] = []
    held = 0
    async for chunk in source:
        pending.append(chunk)
        held += len(chunk)
        if held >= BATCH_BYTES:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


async def pipelined(
    source: AsyncIterator[bytes], decrypt: Callable[[bytes], list[bytes]]
) -> AsyncIterator[bytes]:
    """Decrypted ``source``, one joined piece per batch, with the next batch being read and
    decrypted in threads while the caller sends this one: reading, AES and sending overlap
    instead of taking turns. ``decrypt`` is stateful, so batches still go through it in order."""
    ahead: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(maxsize=2)

    async def pump() -> None:
        try:
            async for piece in source:
                await ahead.put(piece)
            await ahead.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            await ahead.put(exc)

    reader = asyncio.create_task(pump())
    running: asyncio.Future[list[bytes]] | None = None
    try:
        while True:
            item = await ahead.get()
            if isinstance(item, Exception):
                raise item
            done = await running if running is not None else None
            running = None
            if item is not None:
                running = asyncio.ensure_future(asyncio.to_thread(decrypt, item))
            if done:
                yield b"".join(done)
            if item is None:
                return
    finally:
        reader.cancel()
        if running is not None:
            running.cancel()
        with contextlib.suppress(BaseException):
            await reader


async def decrypt_frames(
    pinned: PinnedFile,
    frames: ef.FrameRunDecryptor,
    first: int,
    last: int,
    trim: ef.RangeTrim | None = None,
    batch: int = BATCH_FRAMES,
) -> AsyncIterator[bytes]:
    """Plaintext of frames ``first``..``last`` of the chunked object open in ``pinned``, one
    piece per ``batch`` frames (cut by ``trim`` for a range).

    A batch is one :func:`read_frames` call; batches are read ahead of the caller
    (:meth:`PinnedFile.read_ahead`), so disk, AES and sending overlap. The calls run one after
    the other, in order, so they share one wire buffer (allocated once per read) and ``trim``.
    """
    span = frames.span(first, min(first + batch - 1, last))  # the first run is the longest
    buffer = bytearray(span[1] - span[0])
    runs = ((frames, run, min(run + batch - 1, last), buffer, trim) for run in range(first, last + 1, batch))
    async for piece in pinned.read_ahead(read_frames, runs):
        if piece:
            yield piece


def read_frames(
    fd: int,
    frames: ef.FrameRunDecryptor,
    first: int,
    last: int,
    buffer: bytearray,
    trim: ef.RangeTrim | None = None,
) -> bytes:
    """Plaintext of frames ``first``..``last`` of the chunked object open at ``fd``: one read of
    exactly their wire bytes into ``buffer``, each frame checked and decrypted from there."""
    start, end = frames.span(first, last)
    wire = memoryview(buffer)[: end - start]
    got = pread_into(fd, wire, start)
    pieces = frames.decrypt(first, last, wire[:got])
    if trim is not None:
        pieces = [trim.cut(piece) for piece in pieces]
    return b"".join(pieces)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` of ``fd``; fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        count = os.preadv(fd, [view[got:]], offset + got)
        if not count:
            break
        got += count
    return got


async def stream_to_file(source: AsyncIterator[bytes], path: Path) -> None:
    fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        async for piece in batched(source):
            await asyncio.to_thread(write_all, fd, [piece])
    finally:
        os.close(fd)


def unlink_all(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
