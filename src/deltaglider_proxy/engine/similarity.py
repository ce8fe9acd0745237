"""A cheap estimate of how much of a target's content a reference already holds.

The encoder is expensive when it finds little to copy (a 17 MB wheel against a dissimilar
reference: seconds of CPU for a delta 88 % of the target), so a PUT first compares two small
sketches and skips encoding when the estimate says the delta would not pay. The estimate also lets
formats that are on no extension list earn delta storage.

Features: the 32 bytes after a line feed whose next byte is not lower case or blank, and whose
bytes 8, 16 and 24 are odd. The anchors are content-defined, so an insertion, or a zip member that
moves because an earlier member changed size, leaves every other feature intact. In compressed or
native data a line feed is one byte in 256 and the conditions thin that to one feature per ~2.3 KB
(24 KB in machine code); in text they keep only some line starts (one per ~11 KB in Django's
sdist), so lines that all look alike (CSV, JSON lines) do not cost one feature each. A sketch keeps
the ``SKETCH_HASHES`` smallest distinct CRC-32s of the features: a bottom-k sample, the same
whatever the size of the pieces the bytes arrived in. ``containment`` compares two sketches below
the lower of their two cut-offs, where both samples are complete.

Speed (one core of the 2-core build machine): ``SketchBuilder.update`` 1.2–1.4 GB/s on the four
corpora (wheels, .tgz, plain tar) and 2.9 GB/s on machine code; ``sketch_file`` 1.0–1.2 GB/s. The
scan is one ``re.findall`` per piece (a C loop jumping between line feeds), so short-line text is
the slow case: 0.45 GB/s on JSON lines, 0.6 GB/s on CSV. Text whose lines share a template (SQL
INSERTs, log lines) may yield no feature at all; the estimate is then "unknown" and the encoder
decides.

``WORTH_ENCODING``, validated on the corpora (each version against the first and against the
previous one; bench/CODEC.md): every pair with a real delta ratio below 0.75 — the ratio rule's
default — had containment >= 0.19 and every pair at or above 0.75 had <= 0.148. Skipping wrongly
loses storage for good while encoding wrongly costs only CPU once, so the threshold sits at the
bottom of that gap.
"""

from __future__ import annotations

import re
import struct
import zlib
from bisect import bisect_left
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

# Skip encoding below this estimated containment (see bench/CODEC.md for the validation table).
WORTH_ENCODING = 0.15
SKETCH_HASHES = 2048
FEATURE_BYTES = 32
# Fewer sampled target features than this and the estimate is noise: report "unknown" as 1.0 so
# the encoder (cheap at that size) and the ratio rule decide.
MIN_SAMPLES = 16
READ_BYTES = 1 << 20  # small pieces keep each GIL-holding findall call short

# Line start, not lower case or blank, and three odd bytes inside the feature (see module doc).
_ODD = b"[" + b"".join(re.escape(bytes([value])) for value in range(1, 256, 2)) + b"]"
_ANCHOR = re.compile(
    rb"\n(?=([^a-z \t\r\n].{7}" + _ODD + rb".{7}" + _ODD + rb".{7}" + _ODD + rb".{7}))", re.DOTALL
)
# A feature needs its newline plus FEATURE_BYTES bytes; one byte less may still complete later.
_OVERLAP = FEATURE_BYTES
_ALL = 1 << 32  # threshold meaning "every hash kept"
_MAGIC = b"DGSK"
_VERSION = 1
_HEADER = struct.Struct("<4sBQQI")


@dataclass(frozen=True)
class Sketch:
    """The bottom-k feature hashes of one byte stream (``hashes`` sorted, all ``< threshold``)."""

    size: int
    threshold: int
    hashes: tuple[int, ...]

    def to_bytes(self) -> bytes:
        body = struct.pack(f"<{len(self.hashes)}I", *self.hashes)
        return _HEADER.pack(_MAGIC, _VERSION, self.size, self.threshold, len(self.hashes)) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> Sketch:
        if len(data) < _HEADER.size:
            raise ValueError("sketch too short")
        magic, version, size, threshold, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError("not a sketch of this version")
        if len(data) != _HEADER.size + 4 * count or count > SKETCH_HASHES or threshold > _ALL:
            raise ValueError("malformed sketch")
        hashes = struct.unpack_from(f"<{count}I", data, _HEADER.size)
        if any(a >= b for a, b in pairwise(hashes)) or (hashes and hashes[-1] >= threshold):
            raise ValueError("malformed sketch")
        return cls(size, threshold, hashes)


class SketchBuilder:
    """Builds a Sketch from bytes fed in arrival order, in pieces of any size.

    The result does not depend on how the stream was cut: the last ``_OVERLAP`` bytes of each piece
    are kept so features spanning a cut are found, and features seen twice are one set member.
    """

    def __init__(self) -> None:
        self._size = 0
        self._tail = b""
        self._hashes: set[int] = set()
        self._threshold = _ALL

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        found = set(map(zlib.crc32, _ANCHOR.findall(data)))
        if self._tail:
            # Features that start in the previous piece's tail and end in this one.
            found.update(map(zlib.crc32, _ANCHOR.findall(self._tail + bytes(data[:_OVERLAP]))))
        self._tail = (
            bytes(data[-_OVERLAP:]) if len(data) >= _OVERLAP else (self._tail + bytes(data))[-_OVERLAP:]
        )
        self._size += len(data)
        if self._threshold < _ALL:
            limit = self._threshold
            found = {h for h in found if h < limit}
        self._hashes |= found
        if len(self._hashes) > 2 * SKETCH_HASHES:
            self._trim()

    def _trim(self) -> None:
        # Keep the SKETCH_HASHES smallest; nothing dropped here can be among the final smallest.
        kept = sorted(self._hashes)[:SKETCH_HASHES]
        self._threshold = kept[-1] + 1
        self._hashes = set(kept)

    def finish(self) -> Sketch:
        if len(self._hashes) > SKETCH_HASHES:
            self._trim()
        return Sketch(self._size, self._threshold, tuple(sorted(self._hashes)))


def sketch_file(path: Path) -> Sketch:
    """Blocking: sketch a whole file (callers run it in a worker thread)."""
    builder = SketchBuilder()
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            builder.update(view[:count])
    return builder.finish()


def containment(reference: Sketch, target: Sketch) -> float:
    """Estimated fraction of the target's content also found in the reference, 0..1.

    1.0 when the target offers fewer than ``MIN_SAMPLES`` comparable features (tiny or featureless
    data): too little evidence to refuse an encode.
    """
    cut = min(reference.threshold, target.threshold)
    sample = target.hashes[: bisect_left(target.hashes, cut)]
    if len(sample) < MIN_SAMPLES:
        return 1.0
    known = set(reference.hashes[: bisect_left(reference.hashes, cut)])
    return len(known.intersection(sample)) / len(sample)
