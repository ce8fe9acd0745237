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

# Ciphertext is handed to AES in pieces of about this size: big enough that the thread hop is
# noise next to the AES work, small enough that a request holds a few MiB at most.
BATCH_BYTES = 1024 * 1024
KEY_CHECK_TEXT = b"deltaglider-proxy key check"


def encrypt_file(key: bytes, source: Path, target: Path) -> int:
    """Write the chunked encryption of ``source`` to the new file ``target``; returns the
    plaintext size. Not fsynced here: the backend that takes the file makes it durable (the
    filesystem backend fsyncs what it renames into place; the S3 backend only reads it)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        encryptor = ef.ChunkedEncryptor(key, size)
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(src, BATCH_BYTES):
                write_all(dst, encryptor.update(chunk))
            write_all(dst, encryptor.finish())
        finally:
            os.close(dst)
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
    """Authenticate and decrypt an ``aes-256-gcm-v1`` blob file to ``target`` (streaming GCM,
    so memory stays bounded; ``target`` is removed unless the tag verifies)."""
    size = os.path.getsize(source)
    if size < ef.SINGLE_SHOT_OVERHEAD:
        raise ef.MalformedCiphertext(
            f"encrypted object is {size} bytes; the {ef.MARKER_SINGLE_SHOT} format needs at least "
            f"{ef.SINGLE_SHOT_OVERHEAD}"
        )
    with open(source, "rb") as src:
        iv = src.read(ef.IV_SIZE)
        src.seek(size - ef.TAG_SIZE)
        tag = src.read(ef.TAG_SIZE)
        src.seek(ef.IV_SIZE)
        decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag)).decryptor()
        remaining = size - ef.SINGLE_SHOT_OVERHEAD
        try:
            with open(target, "xb") as dst:
                while remaining:
                    chunk = src.read(min(BATCH_BYTES, remaining))
                    remaining -= len(chunk)
                    dst.write(decryptor.update(chunk))
                decryptor.finalize()
        except InvalidTag:
            target.unlink(missing_ok=True)
            raise ef.DecryptionError(ef.DECRYPTION_FAILED) from None
        except BaseException:
            target.unlink(missing_ok=True)
            raise


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
