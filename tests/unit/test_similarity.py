"""The similarity sketch: stable under any piece boundaries, shift-resistant, serialisable."""

from __future__ import annotations

import io
import random
import zipfile
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaglider_proxy.engine.similarity import (
    SKETCH_HASHES,
    WORTH_ENCODING,
    Sketch,
    SketchBuilder,
    containment,
    sketch_file,
)

MiB = 1024 * 1024


def sketch(data: bytes) -> Sketch:
    builder = SketchBuilder()
    builder.update(data)
    return builder.finish()


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


SAMPLE = random_bytes(2 * MiB, 1)


def test_empty_and_tiny() -> None:
    empty = sketch(b"")
    assert empty == Sketch(0, 1 << 32, ())
    assert SketchBuilder().finish() == empty
    # Too few features to judge: the encoder decides.
    assert containment(sketch(SAMPLE), sketch(b"tiny")) == 1.0
    assert containment(empty, empty) == 1.0


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, len(SAMPLE)), max_size=40))
def test_same_sketch_whatever_the_pieces(cuts: list[int]) -> None:
    builder = SketchBuilder()
    edges = [0, *sorted(cuts), len(SAMPLE)]
    view = memoryview(SAMPLE)
    for start, end in pairwise(edges):
        builder.update(view[start:end])
    assert builder.finish() == sketch(SAMPLE)


def test_byte_by_byte_around_features() -> None:
    data = SAMPLE[:200_000]
    builder = SketchBuilder()
    for index in range(0, len(data), 7):
        builder.update(data[index : index + 7])
    assert builder.finish() == sketch(data)


def test_serialisation_round_trip() -> None:
    for data in (b"", SAMPLE[:50_000], SAMPLE):
        original = sketch(data)
        encoded = original.to_bytes()
        assert Sketch.from_bytes(encoded) == original
        assert len(encoded) <= 32 + 4 * SKETCH_HASHES


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:10],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:-1],
        lambda b: b + b"\x00\x00\x00\x00",
        lambda b: b[:-8] + b[-4:] + b[-8:-4],  # hashes out of order
    ],
)
def test_malformed_sketch_rejected(mangle: object) -> None:
    encoded = sketch(SAMPLE).to_bytes()
    with pytest.raises(ValueError):
        Sketch.from_bytes(mangle(encoded))  # type: ignore[operator]


def test_bottom_k_is_bounded() -> None:
    big = sketch(random_bytes(24 * MiB, 2))
    assert len(big.hashes) == SKETCH_HASHES
    assert big.threshold < 1 << 32
    assert all(h < big.threshold for h in big.hashes)
    assert list(big.hashes) == sorted(set(big.hashes))


def test_identical_and_shifted_copies_are_contained() -> None:
    reference = sketch(SAMPLE)
    assert containment(reference, reference) == 1.0
    shifted = random_bytes(1234, 3) + SAMPLE[:MiB] + random_bytes(777, 4) + SAMPLE[MiB:]
    assert containment(reference, sketch(shifted)) > 0.95


def test_unrelated_random_data_is_not() -> None:
    assert containment(sketch(SAMPLE), sketch(random_bytes(2 * MiB, 5))) < 0.05


def test_partial_overlap_is_proportional() -> None:
    half_new = SAMPLE[:MiB] + random_bytes(MiB, 6)
    estimate = containment(sketch(SAMPLE), sketch(half_new))
    assert 0.35 < estimate < 0.65
    # Containment is one-sided: the half-new target holds only half of the reference.
    assert 0.35 < containment(sketch(half_new), sketch(SAMPLE)) < 0.65
    assert containment(sketch(SAMPLE + random_bytes(MiB, 7)), sketch(SAMPLE)) > 0.95


def test_zip_members_that_move_still_match() -> None:
    """Unchanged deflated members are identical byte runs wherever they land in the archive."""
    rng = random.Random(8)
    members = {f"pkg/module{i}.bin": rng.randbytes(rng.randrange(2_000, 40_000)) for i in range(200)}
    old = zip_of(members)
    members["pkg/module0.bin"] = rng.randbytes(90_000)  # an early member grows: all later ones move
    members["pkg/module7.bin"] = rng.randbytes(1_000)
    new = zip_of(members)
    assert containment(sketch(old), sketch(new)) > 0.85


def test_text_lines_are_sketched() -> None:
    rng = random.Random(9)
    lines = [f"Line {i}: value={rng.random():.12f} name=Item{rng.randrange(10**9)}\n" for i in range(60_000)]
    old = "".join(lines).encode()
    lines[1000:1100] = [f"Changed {i}: {rng.random()}\n" for i in range(100)]
    new = "".join(lines).encode()
    assert len(sketch(old).hashes) >= 100
    assert containment(sketch(old), sketch(new)) > 0.9
    other = "".join(f"Other {rng.random()} {rng.random()}\n" for _ in range(60_000)).encode()
    assert containment(sketch(old), sketch(other)) < WORTH_ENCODING


def test_sketch_file_matches_builder(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = SAMPLE + random_bytes(MiB + 5, 10)
    path.write_bytes(data)
    assert sketch_file(path) == sketch(data)
    path.write_bytes(b"")
    assert sketch_file(path) == sketch(b"")
