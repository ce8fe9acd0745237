"""Encrypted reads from the filesystem backend, in process: the encryption wrapper over a real
FilesystemBackend in a directory with xattrs (storage.md §11.5).

These objects span several read batches (16 frames each), which the server-level tests in
tests/integration/test_encryption.py do not, and they reach the races a local file allows:
replacement and truncation while an object is being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deltaglider_proxy.storage import encryption_format as ef
from deltaglider_proxy.storage import filesystem
from deltaglider_proxy.storage.base import ObjectNotFound
from deltaglider_proxy.storage.encrypted import EncryptedBackend, EncryptionPolicy
from deltaglider_proxy.storage.encryption_io import BATCH_FRAMES
from deltaglider_proxy.storage.filesystem import FilesystemBackend
from deltaglider_proxy.storage.local_files import READ_AHEAD
from deltaglider_proxy.storage.metadata import TOOL, FileMetadata

T = TypeVar("T")
BUCKET = "enc"
KEY = bytes(range(32))
KEY_ID = "unit-key"
CHUNK = ef.CHUNK_SIZE
FRAME = ef.FULL_FRAME_SIZE
SIZE = (2 * BATCH_FRAMES + 8) * CHUNK + 123  # three batches, the last one short
PLAINTEXT = random.Random(7).randbytes(SIZE)


def run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def record_for(data: bytes, user_metadata: dict[str, str] | None = None) -> FileMetadata:
    return FileMetadata(
        tool=TOOL,
        original_name="object.bin",
        file_sha256=hashlib.sha256(data).hexdigest(),
        file_size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        created_at=datetime.now(UTC),
        note="passthrough",
        user_metadata=user_metadata or {},
    )


@dataclass
class Setup:
    root: Path
    inner: FilesystemBackend
    wrapper: EncryptedBackend
    opens: list[str]

    def path(self, name: str) -> Path:
        return self.root / "data" / BUCKET / "deltaspaces" / name

    async def awrite(self, name: str, data: bytes) -> None:
        source = self.root / f"source-{os.urandom(4).hex()}"
        source.write_bytes(data)
        await self.wrapper.write(BUCKET, name, source, record_for(data), move=True)

    def write(self, name: str, data: bytes) -> None:
        run(self.awrite(name, data))

    def store_raw(self, name: str, stored: bytes, record: FileMetadata) -> None:
        """Put bytes and a record below the wrapper, as an out-of-band writer would."""
        source = self.root / "raw"
        source.write_bytes(stored)
        run(self.inner.write(BUCKET, name, source, record, move=True))

    def record(self, name: str) -> FileMetadata:
        stored = run(self.inner.head(BUCKET, name))
        assert stored is not None and stored.record is not None
        return stored.record

    def damage(self, name: str, offset: int, mask: int = 0x01) -> None:
        with open(self.path(name), "r+b") as handle:  # in place: the record stays as it is
            handle.seek(offset)
            byte = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([byte ^ mask]))

    def chunks(self, name: str, start: int = 0, end: int | None = None) -> list[bytes]:
        async def collect() -> list[bytes]:
            return [chunk async for chunk in self.wrapper.read(BUCKET, name, start, end)]

        return run(collect())

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.chunks(name, start, end))

    def prefix_before_failure(self, name: str, start: int = 0) -> tuple[bytes, Exception | None]:
        """What a read yields before it raises, and what it raises."""
        got: list[bytes] = []

        async def collect() -> None:
            async for chunk in self.wrapper.read(BUCKET, name, start):
                got.append(chunk)

        try:
            run(collect())
        except ef.EncryptionError as exc:
            return b"".join(got), exc
        return b"".join(got), None


def _require_xattrs(directory: Path) -> None:
    probe = directory / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.test", b"1")
    except OSError as exc:
        pytest.fail(f"{directory} lacks user xattr support ({exc}); run pytest with --basetemp on ext4/XFS")
    finally:
        probe.unlink()


def make_setup(root: Path, monkeypatch: pytest.MonkeyPatch, ring: ef.KeyRing, encrypt: bool) -> Setup:
    _require_xattrs(root)
    inner = FilesystemBackend(root / "data")
    wrapper = EncryptedBackend(inner, EncryptionPolicy(ring, encrypt_writes=encrypt), root / "crypt")
    run(wrapper.start())
    run(inner.create_bucket(BUCKET))
    opens: list[str] = []
    real_open = FilesystemBackend._open_object

    def counted(self: FilesystemBackend, stack: Any, bucket: str, segments: Any) -> Any:
        opens.append("/".join(segments))  # every head, read and pinned open resolves here
        return real_open(self, stack, bucket, segments)

    monkeypatch.setattr(FilesystemBackend, "_open_object", counted)
    return Setup(root, inner, wrapper, opens)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    ring = ef.KeyRing.build("default", key=KEY, key_id=KEY_ID)
    yield make_setup(tmp_path, monkeypatch, ring, encrypt=True)


# --- whole objects and ranges ----------------------------------------------------------------------


def test_whole_reads_come_in_batches(setup: Setup) -> None:
    setup.write("big.bin", PLAINTEXT)
    assert setup.path("big.bin").read_bytes()[:4] == ef.MAGIC
    chunks = setup.chunks("big.bin")
    assert b"".join(chunks) == PLAINTEXT
    assert [len(c) for c in chunks] == [BATCH_FRAMES * CHUNK, BATCH_FRAMES * CHUNK, 8 * CHUNK + 123]
    assert all(type(c) is bytes for c in chunks)


@pytest.mark.parametrize("size", [0, 1, CHUNK, BATCH_FRAMES * CHUNK, BATCH_FRAMES * CHUNK + 1])
def test_small_and_batch_sized_objects(setup: Setup, size: int) -> None:
    body = PLAINTEXT[:size]
    setup.write("o.bin", body)
    chunks = setup.chunks("o.bin")
    assert b"".join(chunks) == body
    assert len(chunks) == -(-size // (BATCH_FRAMES * CHUNK))  # an empty object yields nothing


def boundaries() -> list[int]:
    points = {0, 1, SIZE - 2, SIZE - 1, SIZE}
    for frame in (1, 2, BATCH_FRAMES - 1, BATCH_FRAMES, BATCH_FRAMES + 1, 2 * BATCH_FRAMES, SIZE // CHUNK):
        points |= {frame * CHUNK - 1, frame * CHUNK, frame * CHUNK + 1}
    return sorted(p for p in points if 0 <= p <= SIZE)


def test_ranges_on_frame_and_batch_boundaries(setup: Setup) -> None:
    setup.write("r.bin", PLAINTEXT)
    points = boundaries()
    for start in points:
        for end in points:
            if start < end:
                assert setup.read("r.bin", start, end) == PLAINTEXT[start:end], (start, end)
    assert setup.read("r.bin", SIZE - 5) == PLAINTEXT[-5:]
    assert setup.read("r.bin", 10, SIZE + 100) == PLAINTEXT[10:]
    assert setup.read("r.bin", SIZE) == b""
    assert setup.read("r.bin", 7, 7) == b""


def test_a_range_decrypts_only_its_frames(setup: Setup) -> None:
    setup.write("f.bin", PLAINTEXT)
    setup.damage("f.bin", ef.frame_offset(BATCH_FRAMES) + 4 + 10)  # inside frame 16
    inside = (BATCH_FRAMES * CHUNK - 100, BATCH_FRAMES * CHUNK)
    assert setup.read("f.bin", *inside) == PLAINTEXT[slice(*inside)]
    after = ((BATCH_FRAMES + 1) * CHUNK, SIZE)
    assert setup.read("f.bin", *after) == PLAINTEXT[slice(*after)]
    with pytest.raises(ef.EncryptionError, match=f"in frame {BATCH_FRAMES}$"):
        setup.read("f.bin", BATCH_FRAMES * CHUNK - 1, BATCH_FRAMES * CHUNK + 1)


# --- one open per read -----------------------------------------------------------------------------


def test_each_read_opens_the_object_once(setup: Setup) -> None:
    setup.write("once.bin", PLAINTEXT)
    for start, end in ((0, None), (CHUNK + 5, 3 * CHUNK), (SIZE - 1, None)):
        setup.opens.clear()
        assert setup.read("once.bin", start, end) == PLAINTEXT[start:end]
        assert setup.opens == ["once.bin"], (start, end)
    setup.store_raw("plain.bin", b"plain bytes", record_for(b"plain bytes"))
    for start in (0, 3):  # a range of an unmarked object also checks its first bytes
        setup.opens.clear()
        assert setup.read("plain.bin", start) == b"plain bytes"[start:]
        assert setup.opens == ["plain.bin"]
    setup.opens.clear()
    with pytest.raises(ObjectNotFound):
        setup.read("absent.bin")
    assert setup.opens == ["absent.bin"]


# --- damage, truncation, replacement ------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (1, "DGE1 magic"),
        (8, "in frame 0$"),  # the base IV
        (ef.HEADER_SIZE, "frame 0 declares"),  # a length field
        (ef.frame_offset(0) + FRAME - 1, "in frame 0$"),  # a tag
        (ef.frame_offset(2 * BATCH_FRAMES + 8) + 4 + 50, f"in frame {2 * BATCH_FRAMES + 8}$"),  # last frame
    ],
)
def test_damage_is_never_served(
    setup: Setup, offset: int, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    setup.write("t.bin", PLAINTEXT)
    setup.damage("t.bin", offset, 0x80)
    with caplog.at_level(logging.ERROR):
        got, raised = setup.prefix_before_failure("t.bin")
    assert raised is not None and re.search(error, str(raised)), raised
    assert got == PLAINTEXT[: len(got)]  # whatever came before the damage was authentic
    assert len(got) <= max(0, (offset - ef.HEADER_SIZE) // FRAME * CHUNK)
    assert KEY_ID in caplog.text and KEY.hex() not in caplog.text


def test_reordered_frames_fail(setup: Setup) -> None:
    setup.write("o.bin", PLAINTEXT)
    stored = setup.path("o.bin").read_bytes()
    first, second = ef.frame_offset(BATCH_FRAMES), ef.frame_offset(BATCH_FRAMES + 1)
    swapped = (
        stored[:first] + stored[second : second + FRAME] + stored[first:second] + stored[second + FRAME :]
    )
    setup.store_raw("o.bin", swapped, setup.record("o.bin"))
    got, raised = setup.prefix_before_failure("o.bin")
    assert re.search(f"decryption failed .* in frame {BATCH_FRAMES}$", str(raised)), raised
    assert got == PLAINTEXT[: BATCH_FRAMES * CHUNK]


def test_a_stored_size_that_does_not_match_the_record_is_refused(setup: Setup) -> None:
    setup.write("cut.bin", PLAINTEXT)
    stored = setup.path("cut.bin").read_bytes()
    record = setup.record("cut.bin")
    for damaged in (stored[:-5], stored[: ef.frame_offset(2 * BATCH_FRAMES + 8)], stored + b"junk"):
        setup.store_raw("cut.bin", damaged, record)
        got, raised = setup.prefix_before_failure("cut.bin")
        assert got == b"" and raised is not None and "stored size" in str(raised)


def test_truncation_while_reading_fails_the_read(setup: Setup) -> None:
    """An out-of-band writer cuts the file short after the open: the read must fail, not end
    early as if the object were complete."""
    # Holding the first batch, the reader has read at most READ_AHEAD more: cut the one after.
    cut_batch = 1 + READ_AHEAD
    body = random.Random(9).randbytes((cut_batch + 2) * BATCH_FRAMES * CHUNK + 123)
    cut_frame = cut_batch * BATCH_FRAMES + 3
    setup.write("shrinking.bin", body)

    async def scenario() -> tuple[bytes, BaseException | None]:
        got = b""
        stream = setup.wrapper.read(BUCKET, "shrinking.bin")
        try:
            got += await anext(stream)
            os.truncate(setup.path("shrinking.bin"), ef.frame_offset(cut_frame) + 100)
            async for chunk in stream:
                got += chunk
        except ef.EncryptionError as exc:
            return got, exc
        return got, None

    got, raised = run(scenario())
    assert raised is not None and f"truncated: input ended inside frame {cut_frame}" in str(raised)
    assert got == body[: cut_batch * BATCH_FRAMES * CHUNK]


def test_replacement_while_reading_serves_the_old_object_whole(setup: Setup) -> None:
    new = random.Random(8).randbytes(SIZE + 5 * CHUNK)
    setup.write("hot.bin", PLAINTEXT)

    async def scenario() -> bytes:
        stream = setup.wrapper.read(BUCKET, "hot.bin")
        got = await anext(stream)
        await setup.awrite("hot.bin", new)  # renamed over the object mid-read
        return got + b"".join([chunk async for chunk in stream])

    assert run(scenario()) == PLAINTEXT
    assert setup.read("hot.bin") == new


def test_a_reader_that_stops_early_leaves_no_fd(setup: Setup) -> None:
    setup.write("left.bin", PLAINTEXT)

    async def scenario() -> None:
        stream = setup.wrapper.read(BUCKET, "left.bin")
        await anext(stream)  # the next batch is now being read and decrypted
        await stream.aclose()
        await asyncio.get_running_loop().shutdown_default_executor()
        await asyncio.sleep(0)

    run(scenario())
    assert not open_fds_of(setup.path("left.bin"))


def open_fds_of(path: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                found.append(int(entry))
    return found


# --- unmarked and legacy objects -------------------------------------------------------------------


def test_unmarked_ciphertext_is_refused(setup: Setup) -> None:
    sealed = ef.encrypt_chunked(KEY, b"x" * 1000)
    setup.store_raw("bare.bin", sealed, record_for(b"x" * 1000))  # markers stripped
    for start, end in ((0, None), (0, 2), (500, 600)):
        with pytest.raises(ef.EncryptionError, match="chunked-encryption magic"):
            setup.read("bare.bin", start, end)


def test_without_keys_only_reads_from_offset_zero_check_the_magic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyless = make_setup(tmp_path, monkeypatch, ef.KeyRing.build("default"), encrypt=False)
    body = ef.MAGIC + b" is how this plaintext happens to start"
    keyless.store_raw("dge1.txt", body, record_for(body))
    with pytest.raises(ef.EncryptionError, match="chunked-encryption magic"):
        keyless.read("dge1.txt")
    assert keyless.read("dge1.txt", 4) == body[4:]  # as before: no extra check per range
    keyless.store_raw("short.txt", b"DG", record_for(b"DG"))
    assert keyless.read("short.txt") == b"DG"


def test_legacy_single_shot_objects(setup: Setup) -> None:
    iv = os.urandom(ef.IV_SIZE)
    blob = iv + AESGCM(KEY).encrypt(iv, PLAINTEXT, None)
    markers = {ef.MARKER_KEY: ef.MARKER_SINGLE_SHOT, ef.KEY_ID_KEY: KEY_ID}
    setup.store_raw("legacy.bin", blob, record_for(PLAINTEXT, markers))
    setup.opens.clear()
    assert setup.read("legacy.bin") == PLAINTEXT
    assert setup.opens == ["legacy.bin"]
    assert setup.read("legacy.bin", CHUNK - 1, CHUNK + 1) == PLAINTEXT[CHUNK - 1 : CHUNK + 1]
    setup.damage("legacy.bin", len(blob) - 1)
    with pytest.raises(ef.EncryptionError, match="decryption failed"):
        setup.read("legacy.bin")
    setup.store_raw("legacy.bin", blob[:20], record_for(PLAINTEXT, markers))
    with pytest.raises(ef.EncryptionError, match="needs at least 28"):
        setup.read("legacy.bin")
    assert [p.name for p in (setup.root / "crypt").iterdir() if p.is_file()] == []  # nothing left behind


def test_the_wrapper_does_not_hand_out_raw_pinned_opens(setup: Setup) -> None:
    assert callable(filesystem.FilesystemBackend.open_pinned)
    with pytest.raises(AttributeError):
        setup.wrapper.open_pinned  # noqa: B018 - the attribute access itself is the test


def test_the_wrapper_does_not_hand_out_raw_s3_reads(tmp_path: Path) -> None:
    from deltaglider_proxy.storage.encrypted import EncryptionPolicy, wrap
    from deltaglider_proxy.storage.s3 import S3Backend

    inner = S3Backend("http://127.0.0.1:9", "us-east-1", True, "key", "secret")
    assert callable(inner.open_read)
    wrapper = wrap(inner, EncryptionPolicy(ef.KeyRing.build("default", key=bytes(32))), tmp_path / "crypt")
    with pytest.raises(AttributeError):
        wrapper.open_read  # noqa: B018 - the attribute access itself is the test
