"""Bodies sealed while they are spooled: the spool writer feeding a SealingWriter instead of a file."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from deltaglider_proxy.engine.spool import Spool, SpoolOverrun
from deltaglider_proxy.storage import encryption_format as ef
from deltaglider_proxy.storage.encryption_io import SealingWriter

KEY = bytes(range(32))


def writer_for(tmp_path: Path, size: int) -> SealingWriter:
    return SealingWriter(tmp_path / "body.sealed", KEY, "k1", size)


def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024 * 1024)
    spool.start()
    return spool


@pytest.mark.parametrize("size", [0, 1, ef.CHUNK_SIZE, 5 * 1024 * 1024 + 7])
def test_sealed_body_decrypts_to_what_was_spooled_and_no_plaintext_file_exists(
    tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    sealed = writer_for(tmp_path, size)
    pool = spool(tmp_path)

    async def run() -> None:
        writer = pool.writer(size, sealed=sealed)
        for offset in range(0, size, 300_001):  # pieces that straddle frames and batches
            await writer.write(data[offset : offset + 300_001])
        body = await writer.finish()
        assert body.sealed is sealed
        assert body.md5_hex == hashlib.md5(data).hexdigest()
        assert body.sha256_hex == hashlib.sha256(data).hexdigest()
        assert not body.path.exists()
        assert list((tmp_path / "spool").iterdir()) == []
        assert pool.used_bytes == size  # the ciphertext on local disk still counts
        wire = sealed.path.read_bytes()
        assert ef.decrypt_chunked(KEY, wire, size) == data
        body.discard()
        assert not sealed.path.exists()
        assert pool.used_bytes == 0

    asyncio.run(run())


def test_more_bytes_than_declared_are_refused_before_they_are_sealed(tmp_path: Path) -> None:
    sealed = writer_for(tmp_path, 10)
    pool = spool(tmp_path)

    async def run() -> None:
        writer = pool.writer(10, sealed=sealed)
        await writer.write(b"123456")
        with pytest.raises(SpoolOverrun):
            await writer.write(b"78901")
        writer.abort()

    asyncio.run(run())
    assert not sealed.path.exists()
    assert pool.used_bytes == 0


def test_abort_with_a_batch_in_flight_removes_the_sealed_file_once_it_is_done(tmp_path: Path) -> None:
    size = 9 * 1024 * 1024
    sealed = writer_for(tmp_path, size)
    pool = spool(tmp_path)

    async def run() -> None:
        writer = pool.writer(size, sealed=sealed)
        await writer.write(os.urandom(5 * 1024 * 1024))  # one batch goes to the threads
        writer.abort()
        for _ in range(200):  # the discard waits for the batch; let it finish
            await asyncio.sleep(0.01)
            if not sealed.path.exists():
                break

    asyncio.run(run())
    assert not sealed.path.exists()
    with pytest.raises(ef.EncryptionError):
        sealed.update(b"late")  # a discarded body takes nothing more


def test_a_short_body_fails_at_finish_and_leaves_nothing(tmp_path: Path) -> None:
    sealed = writer_for(tmp_path, 100)
    sealed.update(b"x" * 40)
    with pytest.raises(ef.PlaintextSizeMismatch):
        sealed.finish()
    sealed.discard()
    assert not sealed.path.exists()
