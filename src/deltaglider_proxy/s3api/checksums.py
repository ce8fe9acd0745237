"""Streaming checksums for the S3 flexible-checksum algorithms.

S3 clients may send ``x-amz-checksum-<alg>`` in a header or, for aws-chunked bodies, in a
trailer. This module only computes digests and works out what the client declared; comparing
the value and raising ``BadDigest`` is the caller's job (it knows when the body is complete).

Digests are rendered the way S3 sends them: base64 of the big-endian digest bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

# awscrt ships no type information; its two functions are wrapped below with explicit types.
from awscrt import checksums as _crt  # type: ignore[import-untyped, unused-ignore]

from deltaglider_proxy.s3api import errors

ALGORITHMS: tuple[str, ...] = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")

_HEADER_PREFIX = "x-amz-checksum-"
# Digest sizes in bytes; used to reject malformed client-supplied header values early.
_DIGEST_SIZES: dict[str, int] = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}


def _canonical(algorithm: str) -> str:
    """The upper-case algorithm name; raises ``InvalidRequest`` for names S3 does not define here."""
    name = algorithm.strip().upper()
    if name not in ALGORITHMS:
        raise errors.InvalidRequest(f"Unsupported checksum algorithm: {algorithm[:64]}")
    return name


def header_name(algorithm: str) -> str:
    """The request/response header carrying ``algorithm``'s value, e.g. ``x-amz-checksum-crc32``."""
    return _HEADER_PREFIX + _canonical(algorithm).lower()


class Checksum(ABC):
    """An incremental checksum: feed bytes with :meth:`update`, read with :meth:`b64digest`.

    ``b64digest`` does not finalise the state, so it may be called at any point and ``update``
    may continue afterwards.
    """

    algorithm: str

    @abstractmethod
    def update(self, data: bytes | memoryview) -> None:
        """Add ``data`` to the running checksum."""

    @abstractmethod
    def digest(self) -> bytes:
        """The big-endian digest of everything fed so far."""

    def b64digest(self) -> str:
        """Base64 of :meth:`digest`, as S3 sends it in ``x-amz-checksum-*``."""
        return base64.b64encode(self.digest()).decode("ascii")


class _CrcChecksum(Checksum):
    """A CRC kept as an unsigned integer of ``width`` bytes, advanced by ``step(data, previous)``."""

    def __init__(self, algorithm: str, step: Callable[[bytes | memoryview, int], int], width: int) -> None:
        self.algorithm = algorithm
        self._step = step
        self._width = width
        self._mask = (1 << (8 * width)) - 1
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = self._step(data, self._value) & self._mask

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


class _HashChecksum(Checksum):
    """A hashlib digest (SHA-1 / SHA-256)."""

    def __init__(self, algorithm: str, hash_name: str) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(hash_name)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def _zlib_crc32(data: bytes | memoryview, previous: int) -> int:
    return zlib.crc32(data, previous)


def _crt_crc32c(data: bytes | memoryview, previous: int) -> int:
    # int() pins awscrt's untyped result (the binding accepts any buffer, memoryviews included).
    return int(_crt.crc32c(data, previous))


def _crt_crc64nvme(data: bytes | memoryview, previous: int) -> int:
    return int(_crt.crc64nvme(data, previous))


def new_checksum(algorithm: str) -> Checksum:
    """A fresh checksum for ``algorithm`` (case-insensitive); unknown names → ``InvalidRequest``."""
    name = _canonical(algorithm)
    if name == "CRC32":
        return _CrcChecksum(name, _zlib_crc32, 4)
    if name == "CRC32C":
        return _CrcChecksum(name, _crt_crc32c, 4)
    if name == "CRC64NVME":
        return _CrcChecksum(name, _crt_crc64nvme, 8)
    return _HashChecksum(name, "sha1" if name == "SHA1" else "sha256")


def _validate_value(algorithm: str, value: str) -> None:
    """Reject a header value that cannot be a digest of ``algorithm`` (S3 answers InvalidRequest)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_SIZES[algorithm]:
        raise errors.InvalidRequest(f"Value for {header_name(algorithm)} header is invalid.")


def requested_checksum(headers: Mapping[str, str]) -> tuple[str, str | None] | None:
    """Which flexible checksum the client asked for, from lower-cased request headers.

    Returns ``None`` when no checksum was declared, ``(algorithm, value)`` when the value came in
    an ``x-amz-checksum-<alg>`` header, and ``(algorithm, None)`` when the algorithm was only
    declared (``x-amz-trailer`` or ``x-amz-sdk-checksum-algorithm``) and the value is expected
    in the aws-chunked trailer. Whether a trailer can actually arrive is for the caller to judge.

    Raises ``InvalidRequest`` for more than one checksum header or trailer declaration, an
    unsupported algorithm, a malformed header value, or declarations that contradict each other.
    """
    in_headers = [alg for alg in ALGORITHMS if header_name(alg) in headers]
    if len(in_headers) > 1:
        raise errors.InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )

    in_trailer: list[str] = []
    for name in (n.strip().lower() for n in headers.get("x-amz-trailer", "").split(",")):
        if not name:
            continue
        if not name.startswith(_HEADER_PREFIX):
            raise errors.InvalidRequest("The value specified in the x-amz-trailer header is not supported")
        in_trailer.append(_canonical(name[len(_HEADER_PREFIX) :]))
    if len(in_trailer) + len(in_headers) > 1:
        raise errors.InvalidRequest(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )

    sdk_value = headers.get("x-amz-sdk-checksum-algorithm", "").strip()
    sdk = _canonical(sdk_value) if sdk_value else None
    if in_headers:
        declared = in_headers[0]
    elif in_trailer:
        declared = in_trailer[0]
    elif sdk is not None:
        declared = sdk
    else:
        return None
    if sdk is not None and sdk != declared:
        raise errors.InvalidRequest("Value for x-amz-sdk-checksum-algorithm header is invalid.")
    if in_headers:
        value = headers[header_name(declared)].strip()
        _validate_value(declared, value)
        return declared, value
    return declared, None
