"""Which objects are candidates for delta storage, and the per-bucket compression policy.

Upstream decides by file extension only (storage.md §2.3). We keep that list — an object on it may
seed a deltaspace's reference — and add two cheaper-to-maintain signals: the first bytes of the body
(archives and dumps announce themselves: a ``.whl`` or ``.nupkg`` is a zip), and, once a reference
exists, a similarity estimate against it (``engine.similarity``), so an operator never has to
curate an extension list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deltaglider_proxy.config.model import BucketPolicyConfig

# storage.md §2.3, verbatim.
DELTA_EXTENSIONS = (
    ".zip",
    ".tar",
    ".tgz",
    ".tar.gz",
    ".tar.bz2",
    ".tar.xz",
    ".jar",
    ".war",
    ".ear",
    ".rar",
    ".7z",
    ".dmg",
    ".iso",
    ".sql",
    ".dump",
    ".bak",
    ".backup",
)
DEFAULT_MAX_DELTA_RATIO = 0.75
# Chain depth a `chain` bucket allows by default: the smallest measured depth that meets every
# savings goal on the corpora (bench/CHAINS-E2E.md; pip-whl 81 % at 16, 78 % at 8, 73 % at 4).
DEFAULT_MAX_CHAIN_DEPTH = 16
Strategy = Literal["reference", "chain"]

# (offset, magic) of formats whose versions usually share long byte runs. Deliberately absent:
# whole-stream compressors (gzip, bzip2, xz, zstd) — one change early in the input rewrites every
# byte after it, so such files are judged by similarity alone.
_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (257, b"ustar", "tar"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x7fELF", "elf"),
    (0, b"MZ", "pe"),
    (0, b"SQLite format 3\x00", "sqlite"),
    (0, b"PGDMP", "pg_dump"),
    (0, b"-- MySQL dump", "mysqldump"),
    (0, b"-- PostgreSQL database dump", "pg_dump"),
    (0, b"\x89HDF\r\n\x1a\n", "hdf5"),
    (0, b"GGUF", "gguf"),
    (0x8001, b"CD001", "iso"),
)
SNIFF_BYTES = 0x8001 + 5


def listed_extension(filename: str) -> bool:
    return filename.lower().endswith(DELTA_EXTENSIONS)


def sniff_format(head: bytes) -> str | None:
    """The archive/dump format announced by the first bytes of a file, if any."""
    for offset, magic, name in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    # safetensors: an 8-byte little-endian header length followed by a JSON object.
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < len(head) * 1024:
        return "safetensors"
    return None


def sniff_file(path: Path) -> str | None:
    """Blocking: read the head of ``path`` and sniff it."""
    with open(path, "rb") as handle:
        return sniff_format(handle.read(SNIFF_BYTES))


@dataclass(frozen=True)
class CompressionPolicy:
    enabled: bool = True
    max_delta_ratio: float = DEFAULT_MAX_DELTA_RATIO
    strategy: Strategy = "reference"
    max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH


class CompressionPolicies:
    """Per-bucket compression switch and ratio threshold (storage.md §2.4, §10.6)."""

    def __init__(self, global_ratio: float, buckets: Mapping[str, BucketPolicyConfig]) -> None:
        if not math.isfinite(global_ratio):
            global_ratio = DEFAULT_MAX_DELTA_RATIO
        self._global = global_ratio
        self._buckets = {name.lower(): policy for name, policy in buckets.items()}

    def for_bucket(self, bucket: str) -> CompressionPolicy:
        policy = self._buckets.get(bucket)
        if policy is None:
            return CompressionPolicy(True, self._global)
        enabled = policy.compression is not False
        ratio = self._global
        if policy.max_delta_ratio is not None and 0.0 <= policy.max_delta_ratio <= 1.0:
            ratio = policy.max_delta_ratio
        elif policy.compression is True and self._global == 0.0:
            ratio = DEFAULT_MAX_DELTA_RATIO
        return CompressionPolicy(
            enabled,
            ratio,
            policy.delta_strategy or "reference",
            policy.max_chain_depth or DEFAULT_MAX_CHAIN_DEPTH,
        )
