"""The filesystem backend's pure segment <-> on-disk name mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltaglider_proxy.storage.base import InvalidObjectName
from deltaglider_proxy.storage.fs_names import (
    EMPTY_NAME,
    HASH_PREFIX,
    MAX_PLAIN_BYTES,
    RESERVED_PREFIX,
    SELF_NAME,
    TEMP_PREFIX,
    decode_segment,
    encode_segment,
    is_hashed,
    is_temp,
    new_temp_name,
    segment_bytes,
    split_name,
)

# Any character but "/" and NUL, surrogates included (they are representable in a str key).
_CHARS = st.characters(exclude_characters=["/", "\x00"], exclude_categories=[])
_TRICKY = st.sampled_from(
    [".", "..", "...", ".dg.", ".dg.self", ".dg.empty", ".dg.tmp.x", ".dg.h.", ".env", " ", "%2F", "\\", "\t"]
)
segments = st.one_of(
    st.text(_CHARS, max_size=20),
    st.text(_CHARS, min_size=50, max_size=300),
    st.builds(lambda a, b: a + b, _TRICKY, st.text(_CHARS, max_size=5)),
    st.text(st.sampled_from("aé€😀"), min_size=45, max_size=70),  # around the 200-byte limit
).filter(lambda segment: segment not in (".", ".."))


def _stored_name(disk: str, segment: str) -> bytes | None:
    """What the backend keeps in user.dg.name for this on-disk name."""
    return segment_bytes(segment) if is_hashed(disk) else None


@given(segments)
def test_round_trip(segment: str) -> None:
    disk = encode_segment(segment)
    assert decode_segment(disk, _stored_name(disk, segment)) == segment


@given(segments)
def test_disk_names_are_safe(segment: str) -> None:
    disk = encode_segment(segment)
    assert disk not in ("", ".", "..")
    assert "/" not in disk and "\x00" not in disk
    raw = disk.encode("utf-8")  # strict: what reaches the kernel is exactly these bytes
    assert len(raw) <= 255
    assert not is_temp(disk) and disk != SELF_NAME


@given(segments, segments)
def test_injective(first: str, second: str) -> None:
    if first != second:
        assert encode_segment(first) != encode_segment(second)


@given(segments)
def test_plain_names_are_verbatim(segment: str) -> None:
    raw = segment.encode("utf-8", "surrogatepass")
    plain = segment and not segment.startswith(RESERVED_PREFIX) and len(raw) <= MAX_PLAIN_BYTES
    try:
        segment.encode("utf-8")
    except UnicodeEncodeError:
        plain = False
    assert (encode_segment(segment) == segment) == bool(plain)


def test_special_segments() -> None:
    assert encode_segment("") == EMPTY_NAME
    assert decode_segment(EMPTY_NAME) == ""
    assert encode_segment(".env") == ".env"
    assert encode_segment("a" * MAX_PLAIN_BYTES) == "a" * MAX_PLAIN_BYTES
    for segment in ("a" * (MAX_PLAIN_BYTES + 1), ".dg.self", ".dg.tmp.1", "\udcc3\udca9"):
        assert encode_segment(segment).startswith(HASH_PREFIX)
    # The surrogate-escaped bytes of "é" must not collide with "é" itself.
    assert encode_segment("\udcc3\udca9") != encode_segment("é")


@pytest.mark.parametrize("segment", [".", "..", "a/b", "a\x00"])
def test_encode_refuses_unstorable_segments(segment: str) -> None:
    with pytest.raises(ValueError):
        encode_segment(segment)


def test_decode_refuses_bookkeeping_and_foreign_names() -> None:
    hashed = encode_segment("x" * 300)
    assert decode_segment(hashed, None) is None  # xattr missing
    assert decode_segment(hashed, b"y" * 300) is None  # xattr does not hash to the name
    assert decode_segment(hashed, b"short") is None  # a plain name may not hide behind a hash
    assert decode_segment(hashed, b"\xff" * 300) is None  # not decodable
    for name in (SELF_NAME, new_temp_name(), TEMP_PREFIX, ".dg.other", "b" * 230, "\udcff"):
        assert decode_segment(name) is None


@given(st.text(_CHARS, max_size=30), st.text(_CHARS, max_size=30))
def test_split_name_keeps_text(first: str, second: str) -> None:
    name = f"x{first}/{second}"
    if all(segment not in (".", "..") for segment in name.split("/")):
        assert "/".join(split_name(name)) == name


@pytest.mark.parametrize(
    "name", ["", "/a", "a/../b", "..", ".", "a/.", "./a", "a\x00b", "a//../b", "../../etc/passwd"]
)
def test_split_name_rejects_hostile_names(name: str) -> None:
    with pytest.raises(InvalidObjectName):
        split_name(name)


def test_temp_names_are_fresh() -> None:
    names = {new_temp_name() for _ in range(100)}
    assert len(names) == 100
    assert all(is_temp(name) for name in names)
