"""Pure mapping between backend object names and on-disk names for the filesystem backend.

A backend object name is split at ``/`` into segments; each segment becomes one on-disk name.
Ordinary segments are stored under their own name so the tree matches storage.md §1.3. The
rest — names the filesystem cannot hold or that would collide with our bookkeeping — map into
the reserved ``.dg.`` namespace:

* the empty segment (``a//b``, ``photos/``) is ``.dg.empty``;
* a segment longer than :data:`MAX_PLAIN_BYTES` UTF-8 bytes, one starting with ``.dg.``, or one
  that is not strict UTF-8 (lone surrogates) is ``.dg.h.<40 hex of its SHA-256>``; the real
  segment is kept in the :data:`NAME_XATTR` extended attribute of that file or directory;
* a file whose path must also be a directory lives inside it as ``.dg.self``;
* in-flight writes use ``.dg.tmp.<random>`` and are never objects.

Everything here is free of I/O so it can be property-tested on its own.
"""

from __future__ import annotations

import hashlib
import secrets

from deltaglider_proxy.storage.base import InvalidObjectName

RESERVED_PREFIX = ".dg."
SELF_NAME = ".dg.self"
EMPTY_NAME = ".dg.empty"
TEMP_PREFIX = ".dg.tmp."
HASH_PREFIX = ".dg.h."
NAME_XATTR = "user.dg.name"
# Well below NAME_MAX (255 bytes) on every Linux filesystem, leaving room for our own names.
MAX_PLAIN_BYTES = 200
HASH_HEX_CHARS = 40

_HEX_DIGITS = frozenset("0123456789abcdef")


def split_name(name: str) -> list[str]:
    """The segments of a backend object name, refusing anything that could escape its bucket.

    The edge validates keys too; this is the store's own line of defence, so it rejects every
    name whose segments could be interpreted by the filesystem rather than stored verbatim.
    """
    if not name:
        raise InvalidObjectName("object name must not be empty")
    if "\x00" in name:
        raise InvalidObjectName("object name must not contain NUL")
    if name.startswith("/"):
        raise InvalidObjectName("object name must not start with '/'")
    segments = name.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise InvalidObjectName("object name must not contain '.' or '..' segments")
    return segments


def segment_bytes(segment: str) -> bytes:
    """The segment as bytes; surrogatepass keeps even non-UTF-8 text injective (and storable)."""
    return segment.encode("utf-8", "surrogatepass")


def _is_plain(segment: str) -> bool:
    """Whether the segment can be its own on-disk name."""
    if segment.startswith(RESERVED_PREFIX):
        return False
    try:
        raw = segment.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: os.fsencode would turn some of them into the bytes of another name.
        return False
    return len(raw) <= MAX_PLAIN_BYTES


def hashed_name(segment: str) -> str:
    return HASH_PREFIX + hashlib.sha256(segment_bytes(segment)).hexdigest()[:HASH_HEX_CHARS]


def encode_segment(segment: str) -> str:
    """The on-disk name of one segment (never ``.``, ``..``, empty, or containing ``/``/NUL)."""
    if segment in (".", "..") or "/" in segment or "\x00" in segment:
        raise ValueError(f"not a storable segment: {segment!r}")
    if not segment:
        return EMPTY_NAME
    if _is_plain(segment):
        return segment
    return hashed_name(segment)


def is_hashed(disk_name: str) -> bool:
    """Whether the on-disk name needs :data:`NAME_XATTR` to be decoded."""
    suffix = disk_name[len(HASH_PREFIX) :]
    return (
        disk_name.startswith(HASH_PREFIX)
        and len(suffix) == HASH_HEX_CHARS
        and all(char in _HEX_DIGITS for char in suffix)
    )


def is_temp(disk_name: str) -> bool:
    return disk_name.startswith(TEMP_PREFIX)


def new_temp_name() -> str:
    return TEMP_PREFIX + secrets.token_hex(8)


def decode_segment(disk_name: str, stored_name: bytes | None = None) -> str | None:
    """The segment an on-disk name stands for, or None when it is not an object name.

    ``stored_name`` is the :data:`NAME_XATTR` value of a hashed entry. Only canonical names are
    accepted (``encode_segment(result) == disk_name``), so a file put there out-of-band that we
    could never address again (a 230-byte name, invalid UTF-8, a forged ``.dg.h.`` xattr) is
    not reported as an object either; reserved bookkeeping names (``.dg.self``, temp files)
    decode to None.
    """
    if is_hashed(disk_name):
        if stored_name is None:
            return None
        try:
            segment = stored_name.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    else:
        segment = "" if disk_name == EMPTY_NAME else disk_name
    try:
        canonical = encode_segment(segment)
    except ValueError:
        return None
    return segment if canonical == disk_name else None
