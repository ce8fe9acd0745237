"""The chain fields of the record in both wire forms: a chained delta carries its base and depth;
a delta against reference.bin is written exactly as before (what the deltaglider CLI reads)."""

from __future__ import annotations

from datetime import UTC, datetime

from deltaglider_proxy.config.model import MAX_CHAIN_DEPTH_CEILING
from deltaglider_proxy.storage.metadata import (
    FileMetadata,
    from_s3_metadata,
    from_xattr_json,
    to_s3_metadata,
    to_xattr_json,
)

BASE_SHA = "b" * 64


def _delta(**changes: object) -> FileMetadata:
    record = FileMetadata(
        tool="deltaglider_proxy/test",
        original_name="v3.zip",
        file_sha256="a" * 64,
        file_size=1000,
        md5="c" * 32,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        note="delta",
        ref_path="reference.bin",
        ref_sha256=BASE_SHA,
        delta_size=10,
        delta_cmd="xdelta3 -e -9 -s reference.bin v3.zip v3.zip.delta",
    )
    return record.with_changes(**changes)


def test_chained_delta_round_trips_in_both_forms() -> None:
    chained = _delta(ref_path="v2.zip", chain_depth=3)
    assert from_xattr_json(to_xattr_json(chained)) == chained
    meta = to_s3_metadata(chained, prefix="rel")
    assert meta["dg-ref-path"] == "v2.zip"
    assert meta["dg-ref-key"] == "rel/v2.zip"
    assert meta["dg-chain-depth"] == "3"
    assert from_s3_metadata(meta) == chained
    assert chained.depth == 3 and chained.base_name == "v2.zip"


def test_reference_delta_is_unchanged() -> None:
    plain = _delta()
    assert plain.depth == 1 and plain.base_name == "reference.bin"
    assert b"chain_depth" not in to_xattr_json(plain)
    meta = to_s3_metadata(plain, prefix="rel")
    assert "dg-chain-depth" not in meta
    assert meta["dg-ref-key"] == "rel/reference.bin" and meta["dg-ref-path"] == "reference.bin"
    assert from_s3_metadata(meta) == plain


def test_malformed_chain_depth_is_refused_not_served_raw() -> None:
    meta = to_s3_metadata(_delta(ref_path="v2.zip", chain_depth=2), prefix="rel")
    meta["dg-chain-depth"] = "two"
    parsed = from_s3_metadata(meta)
    # Still a delta (never unmanaged bytes), with a depth beyond what any GET decodes.
    assert parsed is not None and parsed.note == "delta"
    assert parsed.depth > MAX_CHAIN_DEPTH_CEILING
