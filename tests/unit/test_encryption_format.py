"""Proxy-AES wire formats and key handling (storage.md §11.2–§11.5).

Known-answer vectors come from tests/vectors/make_encryption_vectors.py, which builds the wire
bytes from the spec text without importing the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaglider_proxy.storage import encryption_format as ef
from deltaglider_proxy.storage.base import StorageError
from deltaglider_proxy.storage.encryption_format import (
    CHUNK_SIZE,
    FULL_FRAME_SIZE,
    HEADER_SIZE,
    ChunkedDecryptor,
    ChunkedEncryptor,
    ChunkedRangeDecryptor,
    DecryptionError,
    EncryptionKeyError,
    KeyRing,
    MalformedCiphertext,
    PlaintextSizeMismatch,
)

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "encryption_vectors.json").read_text())
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BOUNDARY_SIZES = sorted(
    {0, 1, 2, 15, 16, 17, 1000}
    | {k * CHUNK_SIZE + d for k in (1, 2, 3) for d in (-1, 0, 1)}
    | {200_000, 3 * CHUNK_SIZE + 12_345}
)


def pattern(description: dict[str, Any]) -> bytes:
    """The vector file's ``sha256-counter`` plaintext description, re-implemented here."""
    assert description["kind"] == "sha256-counter"
    seed, size = description["seed"].encode(), description["size"]
    return b"".join(hashlib.sha256(seed + k.to_bytes(8, "big")).digest() for k in range(-(-size // 32)))[
        :size
    ]


def pieces(data: bytes, rng: random.Random, max_piece: int) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        step = rng.randint(0, max_piece)  # zero-length pieces are legal input too
        yield data[pos : pos + step]
        pos += step


def encrypt_in_pieces(key: bytes, plaintext: bytes, rng: random.Random, max_piece: int = 150_000) -> bytes:
    encryptor = ChunkedEncryptor(key, len(plaintext))
    return encrypt_stream(encryptor, pieces(plaintext, rng, max_piece))


def encrypt_stream(encryptor: ChunkedEncryptor, plaintext: Iterable[bytes]) -> bytes:
    out = [wire for piece in plaintext for wire in encryptor.update(piece)]
    return b"".join([*out, *encryptor.finish()])


def decrypt_stream(decryptor: ChunkedDecryptor | ChunkedRangeDecryptor, wire: Iterable[bytes]) -> bytes:
    plaintext = b"".join(plain for piece in wire for plain in decryptor.update(memoryview(piece)))
    decryptor.finish()
    return plaintext


def decrypt_collecting(
    decryptor: ChunkedDecryptor, wire: bytes, piece: int
) -> tuple[bytes, Exception | None]:
    """Feed ``wire`` in ``piece``-byte pieces; the plaintext emitted before any error, and the error."""
    got = bytearray()
    try:
        for pos in range(0, len(wire), piece):
            for plaintext in decryptor.update(wire[pos : pos + piece]):
                got += plaintext
        decryptor.finish()
    except ef.EncryptionError as error:
        return bytes(got), error
    return bytes(got), None


def frames(wire: bytes) -> list[tuple[int, int]]:
    """(offset, length incl. the 4-byte length field) of each frame, read from the length fields."""
    out, pos = [], HEADER_SIZE
    while pos < len(wire):
        (declared,) = struct.unpack_from("<I", wire, pos)
        out.append((pos, 4 + declared))
        pos += 4 + declared
    return out


# --- known-answer vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["chunked"]["cases"], ids=lambda c: f"size{c['plaintext']['size']}")
def test_chunked_vectors(case: dict[str, Any]) -> None:
    key = bytes.fromhex(VECTORS["chunked"]["key_hex"])
    base_iv = bytes.fromhex(VECTORS["chunked"]["base_iv_hex"])
    plaintext = pattern(case["plaintext"])
    assert hashlib.sha256(plaintext).hexdigest() == case["plaintext_sha256"]
    encryptor = ChunkedEncryptor(key, len(plaintext), base_iv=base_iv)
    wire = encrypt_stream(encryptor, pieces(plaintext, random.Random(7), 40_000))
    assert len(wire) == case["wire_size"] == ef.chunked_wire_size(len(plaintext)) == encryptor.wire_size
    assert wire[:64].hex() == case["wire_head_hex"]
    assert wire[-64:].hex() == case["wire_tail_hex"]
    assert hashlib.sha256(wire).hexdigest() == case["wire_sha256"]
    assert ef.encrypt_chunked(key, plaintext, base_iv=base_iv) == wire
    assert ef.decrypt_chunked(key, wire, len(plaintext)) == plaintext


def test_single_shot_vector() -> None:
    vector = VECTORS["single_shot"]
    key, iv = bytes.fromhex(vector["key_hex"]), bytes.fromhex(vector["iv_hex"])
    plaintext, blob = bytes.fromhex(vector["plaintext_hex"]), bytes.fromhex(vector["blob_hex"])
    assert ef.encrypt_single_shot(key, plaintext, iv=iv) == blob
    assert ef.decrypt_single_shot(key, blob) == plaintext
    assert len(blob) == len(plaintext) + ef.SINGLE_SHOT_OVERHEAD


@pytest.mark.parametrize("case", VECTORS["key_ids"], ids=lambda c: c["hashed_name"] or "empty")
def test_key_id_vectors(case: dict[str, str]) -> None:
    key = bytes.fromhex(case["key_hex"])
    name = case["hashed_name"]
    assert ef.derive_key_id(name, key) == case["key_id"]
    if name.endswith("::legacy"):
        assert ef.derive_legacy_key_id(name.removesuffix("::legacy"), key) == case["key_id"]


# --- single-shot -------------------------------------------------------------------------------


def test_single_shot_round_trip_and_failures() -> None:
    blob = ef.encrypt_single_shot(KEY, b"delta bytes")
    assert blob != ef.encrypt_single_shot(KEY, b"delta bytes")  # random IV per object
    assert ef.decrypt_single_shot(KEY, blob) == b"delta bytes"
    assert ef.decrypt_single_shot(KEY, ef.encrypt_single_shot(KEY, b"")) == b""
    with pytest.raises(DecryptionError, match=r"^decryption failed \(wrong key or tampered data\)$"):
        ef.decrypt_single_shot(OTHER_KEY, blob)
    tampered = bytearray(blob)
    tampered[14] ^= 1
    with pytest.raises(DecryptionError, match="decryption failed"):
        ef.decrypt_single_shot(KEY, bytes(tampered))
    with pytest.raises(MalformedCiphertext, match=r"27 bytes.*at least 28"):
        ef.decrypt_single_shot(KEY, blob[:27])
    with pytest.raises(DecryptionError):
        ef.decrypt_single_shot(KEY, bytes(28))
    assert issubclass(DecryptionError, StorageError)


# --- chunked round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_round_trip_boundary_sizes(size: int) -> None:
    rng = random.Random(size)
    plaintext = rng.randbytes(size)
    wire = encrypt_in_pieces(KEY, plaintext, rng)
    assert len(wire) == ef.chunked_wire_size(size)
    assert len(frames(wire)) == ef.chunk_count(size) == max(1, -(-size // CHUNK_SIZE))
    decryptor = ChunkedDecryptor(KEY, size)
    got = decrypt_stream(decryptor, pieces(wire, rng, 100_000))
    assert got == plaintext


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(
        st.integers(0, 4 * CHUNK_SIZE),
        st.sampled_from(BOUNDARY_SIZES),
    ),
    seed=st.integers(0, 2**32),
    max_piece=st.sampled_from([1, 17, 4096, 65_535, 65_536, 65_556, 70_000, 300_000]),
)
def test_round_trip_random_pieces(size: int, seed: int, max_piece: int) -> None:
    rng = random.Random(seed)
    plaintext = rng.randbytes(size)
    # One-byte pieces over megabytes would only time the loop; cap the piece count.
    max_piece = max(max_piece, size // 2000)
    wire = encrypt_in_pieces(KEY, plaintext, rng, max_piece)
    decryptor = ChunkedDecryptor(KEY, size)
    got = decrypt_stream(decryptor, pieces(wire, rng, max_piece))
    assert got == plaintext


def test_empty_object_is_one_empty_frame() -> None:
    wire = ef.encrypt_chunked(KEY, b"")
    assert len(wire) == 36
    assert wire[:4] == b"DGE1"
    assert struct.unpack_from("<I", wire, 16)[0] == 16


def test_exact_multiple_ends_with_full_final_frame() -> None:
    wire = ef.encrypt_chunked(KEY, bytes(2 * CHUNK_SIZE))
    assert frames(wire) == [(16, FULL_FRAME_SIZE), (16 + FULL_FRAME_SIZE, FULL_FRAME_SIZE)]


def test_header_and_frames_are_written_as_soon_as_ready() -> None:
    encryptor = ChunkedEncryptor(KEY, 2 * CHUNK_SIZE + 10)
    [header] = encryptor.update(bytes(CHUNK_SIZE - 1))  # no frame yet: the chunk is partial
    assert header[:4] == b"DGE1" and len(header) == HEADER_SIZE
    assert [len(p) for p in encryptor.update(bytes(1))] == [FULL_FRAME_SIZE]
    # One piece per frame; the final frame is sealed as soon as its last byte arrives.
    assert [len(p) for p in encryptor.update(bytes(CHUNK_SIZE + 10))] == [FULL_FRAME_SIZE, 4 + 10 + 16]
    assert encryptor.finish() == []
    empty = ChunkedEncryptor(KEY, 0)
    assert [len(p) for p in empty.update(b"")] == [HEADER_SIZE]
    assert [len(p) for p in empty.finish()] == [4 + 16]


def test_random_iv_per_object_and_per_frame_nonces() -> None:
    plaintext = bytes(3 * CHUNK_SIZE)
    a, b = ef.encrypt_chunked(KEY, plaintext), ef.encrypt_chunked(KEY, plaintext)
    assert a[4:16] != b[4:16]
    bodies = {a[offset + 4 : offset + length] for offset, length in frames(a)}
    assert len(bodies) == 3  # identical chunks, distinct ciphertexts


def test_ciphertext_never_contains_a_plaintext_window() -> None:
    unit = b"#!/bin/sh\necho repeated-structure\n" + bytes(range(30))  # 64 bytes
    assert len(unit) == 64
    plaintext = unit * (5 * CHUNK_SIZE // 64) + unit[:33]
    wire = ef.encrypt_chunked(KEY, plaintext)
    windows = {plaintext[i : i + 64] for i in range(64)}  # every distinct 64-byte window
    assert all(window not in wire for window in windows)
    blob = ef.encrypt_single_shot(KEY, plaintext)
    assert all(window not in blob for window in windows)


def test_encryptor_rejects_a_wrong_amount() -> None:
    too_little = ChunkedEncryptor(KEY, 10)
    too_little.update(b"123456789")
    with pytest.raises(PlaintextSizeMismatch, match="9 bytes but 10 were declared"):
        too_little.finish()
    too_much = ChunkedEncryptor(KEY, 10)
    too_much.update(b"12345")
    with pytest.raises(PlaintextSizeMismatch, match="exceeds the declared 10 bytes"):
        too_much.update(b"123456")
    with pytest.raises(RuntimeError):
        too_much.update(b"")
    with pytest.raises(ValueError, match="32 bytes"):
        ChunkedEncryptor(KEY[:16], 10)
    with pytest.raises(ValueError, match="plaintext size"):
        ChunkedEncryptor(KEY, -1)


# --- tampering ---------------------------------------------------------------------------------

SIZE = 3 * CHUNK_SIZE + 3392  # four frames, the last one short
PLAINTEXT = random.Random(1).randbytes(SIZE)
WIRE = ef.encrypt_chunked(KEY, PLAINTEXT)
FRAMES = frames(WIRE)


def flip(wire: bytes, offset: int, mask: int = 0x01) -> bytes:
    tampered = bytearray(wire)
    tampered[offset] ^= mask
    return bytes(tampered)


def assert_fails_at(wire: bytes, frame: int, error: type[Exception], match: str, size: int = SIZE) -> None:
    """Decrypting fails, and only plaintext of frames before ``frame`` was ever emitted."""
    for piece in (1_000, FULL_FRAME_SIZE, len(wire) + 1):
        got, raised = decrypt_collecting(ChunkedDecryptor(KEY, size), wire, piece)
        assert isinstance(raised, error), (piece, raised)
        assert raised.args[0] and re.search(match, raised.args[0])
        assert len(got) <= frame * CHUNK_SIZE
        assert got == PLAINTEXT[: len(got)]


def test_intact_wire_decrypts() -> None:
    got, raised = decrypt_collecting(ChunkedDecryptor(KEY, SIZE), WIRE, 10_000)
    assert raised is None and got == PLAINTEXT


def test_bad_magic() -> None:
    assert_fails_at(flip(WIRE, 0), 0, MalformedCiphertext, "DGE1 magic")


def test_flipped_base_iv() -> None:
    assert_fails_at(flip(WIRE, 10), 0, DecryptionError, r"decryption failed .* frame 0")


@pytest.mark.parametrize("frame", range(4))
def test_flipped_ciphertext_byte(frame: int) -> None:
    offset, _ = FRAMES[frame]
    assert_fails_at(flip(WIRE, offset + 4 + 100), frame, DecryptionError, f"frame {frame}$")


@pytest.mark.parametrize("frame", range(4))
def test_flipped_tag_byte(frame: int) -> None:
    offset, length = FRAMES[frame]
    assert_fails_at(flip(WIRE, offset + length - 1, 0x80), frame, DecryptionError, f"frame {frame}$")


def test_flipped_length_field() -> None:
    offset, _ = FRAMES[1]
    assert_fails_at(flip(WIRE, offset), 1, MalformedCiphertext, "frame 1 declares 65553 bytes but 65552")
    assert_fails_at(flip(WIRE, offset + 2, 0x10), 1, MalformedCiphertext, "frame 1 declares .* above")


def test_truncated_last_frame() -> None:
    for cut in (1, 16, FRAMES[3][1] - 1, FRAMES[3][1]):
        assert_fails_at(WIRE[:-cut], 3, MalformedCiphertext, "truncated: input ended inside frame 3")
    assert_fails_at(WIRE[:10], 0, MalformedCiphertext, "inside its header")
    assert_fails_at(WIRE[:16], 0, MalformedCiphertext, "inside frame 0")


def test_dropped_frame() -> None:
    (o1, l1) = FRAMES[1]
    assert_fails_at(WIRE[:o1] + WIRE[o1 + l1 :], 1, DecryptionError, "decryption failed")
    # Dropping the short final frame leaves a wire that ends too early.
    assert_fails_at(WIRE[: FRAMES[3][0]], 3, MalformedCiphertext, "truncated")


def test_swapped_frames() -> None:
    (o1, l1), (o2, l2) = FRAMES[1], FRAMES[2]
    swapped = WIRE[:o1] + WIRE[o2 : o2 + l2] + WIRE[o1 : o1 + l1] + WIRE[o2 + l2 :]
    assert_fails_at(swapped, 1, DecryptionError, "frame 1$")


def test_frame_reused_as_final() -> None:
    # A full non-final frame passed off as the final one fails: the final flag is authenticated.
    full = ef.encrypt_chunked(KEY, PLAINTEXT[: 2 * CHUNK_SIZE])
    spliced = full[: frame_end(full, 0)]
    assert_fails_at(spliced, 0, DecryptionError, "frame 0$", size=CHUNK_SIZE)


def frame_end(wire: bytes, index: int) -> int:
    offset, length = frames(wire)[index]
    return offset + length


@pytest.mark.parametrize(
    ("declared", "error", "match"),
    [
        (SIZE + 1, MalformedCiphertext, "frame 3 declares 3408 bytes but 3409"),
        (SIZE - 1, MalformedCiphertext, "frame 3 declares 3408 bytes but 3407"),
        (SIZE + CHUNK_SIZE, MalformedCiphertext, "frame 3 declares 3408 bytes but 65552"),
        (3 * CHUNK_SIZE, DecryptionError, "frame 2$"),  # frame 2 is now "final": flag mismatch
        (2 * CHUNK_SIZE + 5, MalformedCiphertext, "frame 2 declares 65552 bytes but 21"),
        (0, MalformedCiphertext, "frame 0 declares 65552 bytes but 16"),
    ],
)
def test_wrong_plaintext_size(declared: int, error: type[Exception], match: str) -> None:
    got, raised = decrypt_collecting(ChunkedDecryptor(KEY, declared), WIRE, 7_000)
    assert isinstance(raised, error) and re.search(match, str(raised)), raised
    assert got == PLAINTEXT[: len(got)]


def test_wrong_key() -> None:
    assert_fails_at_key(OTHER_KEY)


def assert_fails_at_key(key: bytes) -> None:
    got, raised = decrypt_collecting(ChunkedDecryptor(key, SIZE), WIRE, 100_000)
    assert isinstance(raised, DecryptionError) and got == b""


def test_trailing_bytes_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=ef.__name__):
        got, raised = decrypt_collecting(ChunkedDecryptor(KEY, SIZE), WIRE + b"junk" * 5, 30_000)
    assert raised is None and got == PLAINTEXT
    assert "20 bytes after frame 3" in caplog.text


def test_decryptor_is_unusable_after_an_error() -> None:
    decryptor = ChunkedDecryptor(KEY, SIZE)
    with pytest.raises(MalformedCiphertext):
        decryptor.update(flip(WIRE, 0))
    with pytest.raises(RuntimeError):
        decryptor.update(WIRE)


def test_oversized_length_is_refused_before_buffering() -> None:
    decryptor = ChunkedDecryptor(KEY, SIZE)
    decryptor.update(WIRE[:16])
    with pytest.raises(MalformedCiphertext, match="4294967295 bytes, above the 66576-byte limit"):
        decryptor.update(b"\xff\xff\xff\xff")


# --- range planning ----------------------------------------------------------------------------


def boundary_points(size: int) -> list[int]:
    points = {0, 1, size - 1, size}
    for k in range(1, size // CHUNK_SIZE + 1):
        points |= {k * CHUNK_SIZE - 1, k * CHUNK_SIZE, k * CHUNK_SIZE + 1}
    return sorted(p for p in points if 0 <= p <= size)


@pytest.mark.parametrize("size", [1, 2, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 200_000])
def test_range_plans_decrypt_exactly_the_range(size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    wire = ef.encrypt_chunked(KEY, plaintext)
    header = wire[:HEADER_SIZE]
    points = boundary_points(size)
    for start in points:
        for end in points:
            if start >= end:
                continue
            plan = ef.plan_range(size, start, end)
            assert plan.wire_start == HEADER_SIZE + plan.first_chunk_index * FULL_FRAME_SIZE
            assert plan.wire_end <= len(wire)
            assert (plan.wire_end == len(wire)) == (plan.last_chunk_index == ef.final_chunk_index(size))
            decryptor = ChunkedRangeDecryptor(KEY, size, header, plan)
            piece = 9_999 if (start + end) % 2 else 1 << 20
            got = decrypt_stream(
                decryptor,
                (
                    wire[pos : min(pos + piece, plan.wire_end)]
                    for pos in range(plan.wire_start, plan.wire_end, piece)
                ),
            )
            assert got == plaintext[start:end], (start, end)


def test_range_plan_fields() -> None:
    plan = ef.plan_range(200_000, CHUNK_SIZE + 5, 2 * CHUNK_SIZE + 7)
    assert plan == (16 + FULL_FRAME_SIZE, 16 + 3 * FULL_FRAME_SIZE, 1, 5, CHUNK_SIZE + 2)
    assert plan.last_chunk_index == 2
    final = ef.plan_range(200_000, 199_999, 200_000)
    assert final.wire_end == ef.chunked_wire_size(200_000)
    for bad in ((0, 0), (5, 4), (-1, 3), (0, 200_001)):
        with pytest.raises(ValueError):
            ef.plan_range(200_000, *bad)


def test_range_of_tampered_frame_fails() -> None:
    plan = ef.plan_range(SIZE, CHUNK_SIZE, CHUNK_SIZE + 10)
    decryptor = ChunkedRangeDecryptor(KEY, SIZE, WIRE[:16], plan)
    with pytest.raises(DecryptionError):
        decryptor.update(flip(WIRE, FRAMES[1][0] + 50)[plan.wire_start : plan.wire_end])


def test_range_decryptor_needs_the_header() -> None:
    with pytest.raises(ValueError, match="needs the object's header"):
        ChunkedDecryptor(KEY, SIZE, first_index=1)
    with pytest.raises(MalformedCiphertext, match="magic"):
        ChunkedDecryptor(KEY, SIZE, header=b"XXXX" + bytes(12), first_index=1)
    with pytest.raises(ValueError, match="not within"):
        ChunkedDecryptor(KEY, SIZE, header=WIRE[:16], first_index=4)


def test_range_ending_before_the_final_frame_needs_no_more() -> None:
    plan = ef.plan_range(SIZE, 0, 10)
    decryptor = ChunkedRangeDecryptor(KEY, SIZE, WIRE[:16], plan)
    assert decryptor.update(WIRE[plan.wire_start : plan.wire_end]) == [PLAINTEXT[:10]]
    decryptor.finish()


def test_sizes() -> None:
    assert ef.chunked_wire_size(0) == 36
    assert ef.chunked_wire_size(1) == 37
    assert ef.chunked_wire_size(CHUNK_SIZE) == 16 + FULL_FRAME_SIZE
    assert ef.chunked_wire_size(CHUNK_SIZE + 1) == 16 + FULL_FRAME_SIZE + 21
    assert ef.final_chunk_index(0) == 0
    assert ef.final_chunk_index(CHUNK_SIZE) == 0
    assert ef.final_chunk_index(CHUNK_SIZE + 1) == 1
    assert ef.frame_offset(2) == 16 + 2 * 65_556
    assert ef.MAX_FRAME_LEN == 65_536 + 16 + 1_024


# --- keys --------------------------------------------------------------------------------------


def test_parse_key_hex_and_base64() -> None:
    assert ef.parse_key(KEY.hex()) == KEY
    assert ef.parse_key(KEY.hex().upper() + "\n") == KEY
    assert ef.parse_key(base64.b64encode(KEY).decode()) == KEY
    assert ef.parse_key(base64.b64encode(KEY).decode().rstrip("=")) == KEY
    tricky = bytes([0xFB, 0xFF] * 16)  # base64 uses + and /, urlsafe - and _
    assert ef.parse_key(base64.urlsafe_b64encode(tricky).decode()) == tricky
    assert ef.parse_key(base64.b64encode(tricky).decode()) == tricky


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "key is empty"),
        ("   ", "key is empty"),
        ("ab" * 31, r"key must be 32 bytes \(64 hex chars\); got 62 hex chars"),
        ("ab" * 33, "got 66 hex chars"),
        ("zz" * 32, "invalid hex key: 64 chars but not all are hex digits"),
        ("zz" * 33, "base64 decodes to 49 bytes"),
        (base64.b64encode(bytes(16)).decode(), "base64 decodes to 16 bytes"),
        ("not a key!", "neither 64 hex chars nor base64"),
    ],
)
def test_parse_key_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as raised:
        ef.parse_key(text)
    if text.strip():
        assert text.strip() not in str(raised.value)  # never echo key material


def test_derived_ids() -> None:
    key_id = ef.derive_key_id("default", KEY)
    assert len(key_id) == 16 and key_id == key_id.lower()
    assert key_id != ef.derive_key_id("eu-archive", KEY)  # same bytes, different backend
    assert ef.derive_legacy_key_id("default", KEY) == ef.derive_key_id("default::legacy", KEY)
    assert ef.derive_legacy_key_id("default", KEY) != key_id


@pytest.mark.parametrize(
    ("key_id", "valid"),
    [
        ("a", True),
        ("prod-2024.v1_A", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("slash/no", False),
        ("ünïcode", False),
        ("trailing\n", False),
    ],
)
def test_key_id_charset(key_id: str, valid: bool) -> None:
    assert ef.is_valid_key_id(key_id) is valid


# --- key choice (§11.5) ------------------------------------------------------------------------

NEW, OLD = KEY, OTHER_KEY


def test_ring_build_derives_ids() -> None:
    ring = KeyRing.build("eu", key=NEW, legacy_key=OLD)
    assert ring.primary_key_id == ef.derive_key_id("eu", NEW)
    assert ring.legacy == ef.LegacyKey(ef.derive_key_id("eu::legacy", OLD), OLD)
    explicit = KeyRing.build("eu", key=NEW, key_id="k2", legacy_key=OLD, legacy_key_id="k1")
    assert (explicit.primary_key_id, explicit.legacy) == ("k2", ef.LegacyKey("k1", OLD))
    # A legacy id without a legacy key is ignored.
    assert KeyRing.build("eu", key=NEW, legacy_key_id="k1").legacy is None
    assert KeyRing.build("eu").primary_key_id is None
    assert KeyRing.build("eu", key_id="k2").primary_key is None
    assert NEW.hex() not in repr(explicit) and OLD.hex() not in repr(explicit)
    assert repr(NEW) not in repr(explicit) and repr(OLD) not in repr(explicit)
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing.build("eu", key=NEW[:31])


def test_key_choice_primary_and_legacy() -> None:
    ring = KeyRing.build("eu", key=NEW, key_id="k2", legacy_key=OLD, legacy_key_id="k1")
    assert ring.key_for("k2") == NEW
    assert ring.key_for("k1") == OLD
    assert ring.key_for(None) == NEW  # pre-0.9 objects: primary key


def key_error(ring: KeyRing, stamped: str | None) -> str:
    with pytest.raises(EncryptionKeyError) as raised:
        ring.key_for(stamped)
    message = str(raised.value)
    for key in (NEW, OLD):
        assert key.hex() not in message and repr(key) not in message
    return message


def test_key_choice_stamped_primary_id_without_key() -> None:
    ring = KeyRing.build("eu", key_id="k2", legacy_key=OLD, legacy_key_id="k1")
    assert key_error(ring, "k2").startswith("object is encrypted but no key is configured")
    assert ring.key_for("k1") == OLD


def test_key_choice_unstamped_without_primary_key() -> None:
    assert key_error(KeyRing.build("eu", legacy_key=OLD), None).startswith(
        "object is encrypted but no key is configured"
    )
    assert key_error(KeyRing.build("eu", key_id="k2"), None).startswith("object is encrypted but no key")


def test_key_choice_backend_without_any_key() -> None:
    message = key_error(KeyRing.build("eu"), "k9")
    assert "key id 'k9'" in message and "backend 'eu' has NO encryption key configured" in message
    with_legacy = key_error(KeyRing.build("eu", legacy_key=OLD, legacy_key_id="k1"), "k9")
    assert "NO encryption key configured" in with_legacy and "'k1'" in with_legacy


def test_key_choice_mismatch_cites_both_ids() -> None:
    ring = KeyRing.build("eu", key=NEW, key_id="k2", legacy_key=OLD, legacy_key_id="k1")
    message = key_error(ring, "k9")
    assert message.startswith(
        "object was encrypted with key id 'k9', but this backend is configured with key id 'k2' "
        "(no legacy-shim match either"
    )
    assert "'k1'" in message
    # The documented rotation gotcha: derived primary id never matches a derived legacy id.
    old_ring = KeyRing.build("eu", key=OLD)
    rotated = KeyRing.build("eu", key=NEW, legacy_key=OLD)
    assert "no legacy-shim match" in key_error(rotated, old_ring.primary_key_id)
    fixed = KeyRing.build("eu", key=NEW, legacy_key=OLD, legacy_key_id=old_ring.primary_key_id)
    assert fixed.key_for(old_ring.primary_key_id) == OLD


def test_key_choice_id_only_mismatch() -> None:
    # Proxy mode declaring only a key_id: a different stamp is a mismatch, not "no key".
    assert "configured with key id 'k2'" in key_error(KeyRing.build("eu", key_id="k2"), "k9")


# --- markers and the unmarked-ciphertext guard -------------------------------------------------


def test_markers() -> None:
    assert (ef.MARKER_KEY, ef.KEY_ID_KEY) == ("dg-encrypted", "dg-encryption-key-id")
    assert (ef.MARKER_SINGLE_SHOT, ef.MARKER_CHUNKED) == ("aes-256-gcm-v1", "aes-256-gcm-chunked-v1")
    assert ef.NATIVE_MARKER_KEY == "dg-encrypted-native"


def test_unmarked_ciphertext_guard() -> None:
    assert ef.starts_with_chunked_magic(WIRE[:100])
    assert ef.starts_with_chunked_magic(memoryview(WIRE)[:4])
    assert not ef.starts_with_chunked_magic(b"DGE")
    assert not ef.starts_with_chunked_magic(b"PK\x03\x04")
    with pytest.raises(ef.UnmarkedCiphertext, match="Refusing to serve ciphertext as plaintext"):
        ef.refuse_unmarked_ciphertext(WIRE[:65_536])
    ef.refuse_unmarked_ciphertext(b"plain text")
    ef.refuse_unmarked_ciphertext(b"")


# --- frame runs (random-access readers) ----------------------------------------------------------


def run_of(wire: bytes, frames: ef.FrameRunDecryptor, first: int, last: int) -> bytes:
    start, end = frames.span(first, last)
    return b"".join(frames.decrypt(first, last, wire[start:end]))


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, SIZE])
def test_every_frame_run_decrypts_to_its_plaintext(size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    wire = ef.encrypt_chunked(KEY, plaintext)
    frames = ef.FrameRunDecryptor(KEY, size, wire[:HEADER_SIZE])
    final = frames.final_index
    assert frames.span(0, final) == (HEADER_SIZE, len(wire))
    for first in range(final + 1):
        for last in range(first, final + 1):
            expected = plaintext[first * CHUNK_SIZE : (last + 1) * CHUNK_SIZE]
            assert run_of(wire, frames, first, last) == expected, (first, last)


@pytest.mark.parametrize("size", [1, CHUNK_SIZE, CHUNK_SIZE + 1, 200_000])
def test_frame_runs_and_range_trim_give_exactly_the_range(size: int) -> None:
    plaintext = random.Random(size).randbytes(size)
    wire = ef.encrypt_chunked(KEY, plaintext)
    frames = ef.FrameRunDecryptor(KEY, size, wire[:HEADER_SIZE])
    points = boundary_points(size)
    for start in points:
        for end in (p for p in points if p > start):
            plan = ef.plan_range(size, start, end)
            trim = ef.RangeTrim(plan)
            got = b""
            # One frame per run, so the trim sees the first and the last frame separately.
            for index in range(plan.first_chunk_index, plan.last_chunk_index + 1):
                got += b"".join(
                    trim.cut(piece) for piece in frames.decrypt(index, index, wire_of(wire, index))
                )
            assert got == plaintext[start:end], (start, end)


def wire_of(wire: bytes, index: int) -> bytes:
    offset, length = frames(wire)[index]
    return wire[offset : offset + length]


def assert_run_fails(
    wire: bytes, first: int, last: int, error: type[Exception], match: str, size: int = SIZE
) -> None:
    run = ef.FrameRunDecryptor(KEY, size, WIRE[:HEADER_SIZE])
    start, end = run.span(first, last)
    with pytest.raises(error) as raised:
        run.decrypt(first, last, wire[start:end])
    assert re.search(match, str(raised.value)), raised.value


def test_frame_run_refuses_a_wrong_length_field() -> None:
    offset, _ = FRAMES[1]
    assert_run_fails(flip(WIRE, offset), 0, 3, MalformedCiphertext, "frame 1 declares 65553 bytes but 65552")
    assert_run_fails(flip(WIRE, offset + 3, 0x80), 1, 2, MalformedCiphertext, "frame 1 declares .* above")
    last, _ = FRAMES[3]
    assert_run_fails(flip(WIRE, last), 3, 3, MalformedCiphertext, "frame 3 declares 3409 bytes but 3408")


@pytest.mark.parametrize("frame", range(4))
def test_frame_run_refuses_a_tampered_frame(frame: int) -> None:
    offset, length = FRAMES[frame]
    for damaged in (flip(WIRE, offset + length - 1, 0x80), flip(WIRE, offset + 4 + 7)):
        assert_run_fails(damaged, 0, 3, DecryptionError, f"decryption failed .* in frame {frame}$")
        assert_run_fails(damaged, frame, frame, DecryptionError, f"in frame {frame}$")
        run = ef.FrameRunDecryptor(KEY, SIZE, WIRE[:HEADER_SIZE])
        others = [index for index in range(4) if index != frame]
        for index in others:  # runs that do not hold the damage still authenticate
            assert (
                run_of(damaged, run, index, index) == PLAINTEXT[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
            )


def test_frame_run_binds_index_and_final_flag() -> None:
    run = ef.FrameRunDecryptor(KEY, SIZE, WIRE[:HEADER_SIZE])
    with pytest.raises(DecryptionError, match=r"in frame 1$"):
        run.decrypt(1, 1, wire_of(WIRE, 2))  # frame 2's bytes where frame 1 belongs
    (o1, l1), (o2, l2) = FRAMES[1], FRAMES[2]
    swapped = WIRE[:o1] + WIRE[o2 : o2 + l2] + WIRE[o1 : o1 + l1] + WIRE[o2 + l2 :]
    assert_run_fails(swapped, 0, 3, DecryptionError, "in frame 1$")
    # Frame 0 of a two-frame object, passed off as the final frame of a one-frame object.
    two = ef.encrypt_chunked(KEY, PLAINTEXT[: 2 * CHUNK_SIZE])
    single = ef.FrameRunDecryptor(KEY, CHUNK_SIZE, two[:HEADER_SIZE])
    with pytest.raises(DecryptionError, match=r"in frame 0$"):
        single.decrypt(0, 0, wire_of(two, 0))
    # And the final frame of that object read as if more frames followed it.
    longer = ef.FrameRunDecryptor(KEY, 3 * CHUNK_SIZE, two[:HEADER_SIZE])
    with pytest.raises(DecryptionError, match=r"in frame 1$"):
        longer.decrypt(1, 1, wire_of(two, 1))


def test_frame_run_reports_truncation() -> None:
    run = ef.FrameRunDecryptor(KEY, SIZE, WIRE[:HEADER_SIZE])
    start, end = run.span(2, 3)
    for cut in (1, 16, FRAMES[3][1] - 3, FRAMES[3][1]):
        with pytest.raises(
            MalformedCiphertext, match=r"truncated: input ended inside frame 3 .*frames up to 3"
        ):
            run.decrypt(2, 3, WIRE[start : end - cut])
    with pytest.raises(MalformedCiphertext, match="inside frame 2"):
        run.decrypt(2, 3, b"")


def test_frame_run_arguments() -> None:
    run = ef.FrameRunDecryptor(KEY, SIZE, WIRE[:HEADER_SIZE])
    for first, last in ((-1, 0), (2, 1), (0, 4)):
        with pytest.raises(ValueError, match=r"not within 0\.\.3"):
            run.span(first, last)
    with pytest.raises(ValueError, match="which span"):
        run.decrypt(3, 3, WIRE[FRAMES[3][0] :] + b"x")
    with pytest.raises(MalformedCiphertext, match="magic"):
        ef.FrameRunDecryptor(KEY, SIZE, flip(WIRE, 0)[:HEADER_SIZE])
    with pytest.raises(MalformedCiphertext, match="inside its 16-byte header"):
        ef.FrameRunDecryptor(KEY, SIZE, WIRE[:10])
