"""Flexible checksums, cross-checked against botocore's own implementations."""

from __future__ import annotations

import base64
import hashlib
import itertools
import zlib
from collections.abc import Callable

import pytest
from botocore import httpchecksum
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaglider_proxy.s3api import checksums, errors

# botocore's classes for each algorithm: the reference a real client uses to fill x-amz-checksum-*.
REFERENCE: dict[str, Callable[[], httpchecksum.BaseChecksum]] = {
    "CRC32": httpchecksum.Crc32Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}


def reference_b64(algorithm: str, data: bytes) -> str:
    checksum = REFERENCE[algorithm]()
    checksum.update(data)
    return str(checksum.b64digest())


def test_algorithms_and_header_names() -> None:
    assert checksums.ALGORITHMS == ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
    assert [checksums.header_name(a) for a in checksums.ALGORITHMS] == [
        "x-amz-checksum-crc32",
        "x-amz-checksum-crc32c",
        "x-amz-checksum-crc64nvme",
        "x-amz-checksum-sha1",
        "x-amz-checksum-sha256",
    ]
    assert checksums.header_name("crc32c") == "x-amz-checksum-crc32c"


@pytest.mark.parametrize("algorithm", checksums.ALGORITHMS)
def test_empty_input_matches_botocore(algorithm: str) -> None:
    assert checksums.new_checksum(algorithm).b64digest() == reference_b64(algorithm, b"")


def test_known_answers() -> None:
    # "123456789" is the standard CRC check input; the expected integers are the published check values.
    data = b"123456789"
    expected_ints = {
        "CRC32": (0xCBF43926, 4),
        "CRC32C": (0xE3069283, 4),
        "CRC64NVME": (0xAE8B14860A799888, 8),
    }
    for algorithm, (value, width) in expected_ints.items():
        checksum = checksums.new_checksum(algorithm)
        checksum.update(data)
        assert checksum.b64digest() == base64.b64encode(value.to_bytes(width, "big")).decode()
    sha = checksums.new_checksum("sha256")
    sha.update(data)
    assert sha.b64digest() == base64.b64encode(hashlib.sha256(data).digest()).decode()
    # The CRC32C of 66560 bytes of 'a' from AWS's trailing-checksum signing example.
    crc32c = checksums.new_checksum("CRC32C")
    crc32c.update(b"a" * 66560)
    assert crc32c.b64digest() == "sOO8/Q=="


def test_case_insensitive_names_and_algorithm_attribute() -> None:
    for name in ("crc32", "Crc32C", "crc64nvme", "sha1", "Sha256"):
        assert checksums.new_checksum(name).algorithm == name.upper()


@pytest.mark.parametrize("name", ["MD5", "crc16", "", "sha512 ", "x-amz-checksum-crc32"])
def test_unknown_algorithm_is_invalid_request(name: str) -> None:
    with pytest.raises(errors.S3Error) as info:
        checksums.new_checksum(name)
    assert info.value.code == "InvalidRequest"
    with pytest.raises(errors.S3Error):
        checksums.header_name(name)


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(checksums.ALGORITHMS),
    data=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12),
    as_memoryview=st.booleans(),
)
def test_random_chunkings_match_botocore(
    algorithm: str, data: bytes, cuts: list[int], as_memoryview: bool
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    checksum = checksums.new_checksum(algorithm)
    for start, end in itertools.pairwise(bounds):
        piece = data[start:end]
        checksum.update(memoryview(piece) if as_memoryview else piece)
    assert checksum.b64digest() == reference_b64(algorithm, data)


def test_digest_can_be_read_midway() -> None:
    checksum = checksums.new_checksum("CRC32")
    checksum.update(b"abc")
    assert checksum.b64digest() == base64.b64encode(zlib.crc32(b"abc").to_bytes(4, "big")).decode()
    checksum.update(b"def")
    assert checksum.b64digest() == reference_b64("CRC32", b"abcdef")


def test_requested_checksum_none() -> None:
    assert checksums.requested_checksum({}) is None
    # Headers that share the prefix but are not algorithms do not count.
    assert (
        checksums.requested_checksum({"x-amz-checksum-type": "FULL_OBJECT", "x-amz-checksum-mode": "ENABLED"})
        is None
    )


def test_requested_checksum_from_header() -> None:
    value = reference_b64("CRC32", b"hello")
    assert checksums.requested_checksum({"x-amz-checksum-crc32": value}) == ("CRC32", value)
    sha = reference_b64("SHA256", b"hello")
    headers = {"x-amz-checksum-sha256": sha, "x-amz-sdk-checksum-algorithm": "sha256"}
    assert checksums.requested_checksum(headers) == ("SHA256", sha)


def test_requested_checksum_declared_for_trailer() -> None:
    headers = {"x-amz-trailer": "x-amz-checksum-crc64nvme", "x-amz-sdk-checksum-algorithm": "CRC64NVME"}
    assert checksums.requested_checksum(headers) == ("CRC64NVME", None)
    assert checksums.requested_checksum({"x-amz-trailer": "X-Amz-Checksum-CRC32C"}) == ("CRC32C", None)
    assert checksums.requested_checksum({"x-amz-sdk-checksum-algorithm": "sha1"}) == ("SHA1", None)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": reference_b64("SHA1", b"")},
        {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-trailer": "x-amz-checksum-crc32c"},
        {"x-amz-trailer": "x-amz-checksum-crc32,x-amz-checksum-sha1"},
        {"x-amz-trailer": "x-amz-checksum-md5"},
        {"x-amz-trailer": "x-amz-meta-foo"},
        {"x-amz-sdk-checksum-algorithm": "MD5"},
        {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-sdk-checksum-algorithm": "CRC32C"},
        {"x-amz-checksum-crc32": "not base64!"},
        {"x-amz-checksum-crc32": "AAAAAAAAAAA="},  # 8 bytes for a 4-byte digest
        {"x-amz-checksum-sha256": reference_b64("SHA1", b"")},
    ],
)
def test_requested_checksum_rejects(headers: dict[str, str]) -> None:
    with pytest.raises(errors.S3Error) as info:
        checksums.requested_checksum(headers)
    assert info.value.code == "InvalidRequest"
    assert info.value.status == 400
