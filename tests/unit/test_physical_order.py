"""Layout listings: S3's physical (byte) order recovered from a backend's logical order.

Two levels: the pure reordering (fed a logical listing built here), and LayoutAccess.list_page
on a real filesystem backend, paged with every page size against the sorted names.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaglider_proxy.engine.layout import LayoutAccess
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.physical_order import PhysicalOrder, logical_start_after, physical_key
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.storage.base import CommonPrefix, StoredObject, logical_sort_key
from deltaglider_proxy.storage.filesystem import FilesystemBackend
from deltaglider_proxy.storage.metadata import TOOL, FileMetadata

TRICKY = [
    "a.zip-1",
    "a.zip.delta",
    "a.zip0",
    "a.zip",
    "a/",
    "a/b",
    "a/b.delta",
    "a/reference.bin",
    "a-",
    "a.delta",
    "a.d",
    "a.deltb",
    "a",
    "reference.bin",
    "b.delta",
    "b.",
    "b-x.delta",
    "é.delta",
    "é-",
]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def logical_listing(names: list[str], start_after: str = "") -> list[StoredObject]:
    """What Backend.list yields: logical order, ``x`` before ``x.delta``, exclusive start."""
    after = physical_key(start_after)
    chosen = [n for n in names if logical_sort_key(n) > after or not start_after]
    chosen.sort(key=lambda n: (logical_sort_key(n), physical_key(n)))
    return [StoredObject(name=n, size=0, modified=NOW, record_loaded=False) for n in chosen]


def reorder(names: list[str], cursor: str, delimiter: str | None = None) -> list[str]:
    order = PhysicalOrder("", cursor, delimiter)
    for entry in logical_listing(names, logical_start_after(cursor)):
        order.add(entry)
    order.finish()
    return [e.name for e in order.released]


def test_logical_and_physical_orders_disagree() -> None:
    assert logical_sort_key("a.zip.delta") < logical_sort_key("a.zip-1")
    assert physical_key("a.zip-1") < physical_key("a.zip.delta") < physical_key("a.zip0")


def test_full_listing_is_in_byte_order() -> None:
    assert reorder(TRICKY, "") == sorted(TRICKY, key=physical_key)


@pytest.mark.parametrize("cursor", [*TRICKY, "", "a.zip.", "a.zip.d", "a.zip.delta0", "zzz", "-"])
def test_every_cursor(cursor: str) -> None:
    expected = [n for n in sorted(TRICKY, key=physical_key) if physical_key(n) > physical_key(cursor)]
    assert reorder(TRICKY, cursor) == expected


def test_start_after_bound() -> None:
    # "a.zip.delta" > "a.zip-1" while its logical key "a.zip" < "a.zip-1": start below "a.zip".
    assert logical_start_after("a.zip-1") == "a.zi"
    assert logical_start_after("a.zip") == "a.zi"
    assert logical_start_after("releases/v1.zip") == "releases/v1.zi"
    assert logical_start_after("-x") == ""  # ".delta" > "-x": everything may follow
    assert logical_start_after("") == ""


def test_own_roll_up_with_other_delimiters() -> None:
    # Delimiter "-": "a.zip-1" → "a.zip-", "a-" → "a-", "b-x.delta" → "b-", "é-" → "é-".
    got = reorder(TRICKY, "", "-")
    expected_prefixes = {"a.zip-", "a-", "b-", "é-"}
    rolled = {n for n in got if n in expected_prefixes}
    assert rolled == expected_prefixes
    assert got == sorted(got, key=physical_key)
    assert len(got) == len(set(got))


@settings(max_examples=300, deadline=None)
@given(
    names=st.sets(
        st.tuples(st.text(alphabet="ab.-/z0", min_size=1, max_size=6), st.booleans()).map(
            lambda pair: pair[0] + ".delta" if pair[1] else pair[0]
        ),
        min_size=1,
        max_size=25,
    ),
    cursor=st.text(alphabet="ab.-/z0delt", max_size=8),
)
def test_any_names_any_cursor(names: set[str], cursor: str) -> None:
    # A name and its .delta variant may both exist (crash window): both are listed raw.
    listed = sorted(names, key=physical_key)
    assert reorder(sorted(names), cursor) == [n for n in listed if physical_key(n) > physical_key(cursor)]


def test_common_prefixes_from_the_backend_pass_through() -> None:
    order = PhysicalOrder("", "a/")
    order.add(StoredObject(name="a.zip.delta", size=0, modified=NOW))
    order.add(CommonPrefix("a/"))  # not after the cursor: dropped
    order.add(StoredObject(name="a0", size=0, modified=NOW))
    order.add(CommonPrefix("b/"))
    order.finish()
    assert [e.name for e in order.released] == ["a0", "b/"]


# ---------------------------------------------------------------------------------------------
# LayoutAccess.list_page on the real filesystem backend
# ---------------------------------------------------------------------------------------------


def _record(name: str) -> FileMetadata:
    return FileMetadata(
        tool=TOOL,
        original_name=name.rsplit("/", 1)[-1] or "x",
        file_sha256=hashlib.sha256(name.encode()).hexdigest(),
        file_size=len(name),
        md5=hashlib.md5(name.encode()).hexdigest(),
        created_at=NOW,
        note="passthrough",
    )


async def _fill(tmp_path: Path, names: list[str]) -> LayoutAccess:
    backend = FilesystemBackend(tmp_path / "data")
    await backend.start()
    await backend.create_bucket("bkt")
    for name in names:
        if name.endswith("/"):
            await backend.write_directory_marker("bkt", name)
            continue
        source = tmp_path / "body"
        source.write_bytes(name.encode())
        await backend.write("bkt", name, source, _record(name))
    cache = ReferenceCache(tmp_path / "refs", 0)
    cache.start()
    return LayoutAccess(backend, references=cache, locks=DeltaspaceLocks())


async def _pages(
    layout: LayoutAccess, size: int, delimiter: str | None = None, prefix: str = ""
) -> list[str]:
    seen: list[str] = []
    cursor = ""
    for _ in range(100):
        page = await layout.list_page("bkt", prefix, delimiter, cursor, size)
        names = [o.key for o in page.objects] + page.common_prefixes
        seen.extend(sorted(names, key=physical_key))
        assert len(names) <= size
        if not page.is_truncated:
            return seen
        assert page.next_cursor is not None
        cursor = page.next_cursor
    raise AssertionError("listing did not end")


def test_list_page_on_filesystem(tmp_path: Path) -> None:
    names = [n for n in TRICKY if n != "a"]  # "a" and "a/…" coexist too, but keep it readable

    async def run() -> None:
        layout = await _fill(tmp_path, [*names, "a"])
        everything = sorted([*names, "a"], key=physical_key)
        for size in (1, 2, 3, 1000):
            assert await _pages(layout, size) == everything
        top = sorted({n.split("/", 1)[0] + ("/" if "/" in n else "") for n in everything}, key=physical_key)
        for size in (1, 2, 1000):
            assert await _pages(layout, size, "/") == top
        assert await _pages(layout, 1, prefix="a.zip") == ["a.zip", "a.zip-1", "a.zip.delta", "a.zip0"]
        page = await layout.list_page("bkt", "", None, "", 1000)
        by_name = {o.key: o for o in page.objects}
        assert by_name["a/"].directory and by_name["a/"].etag == '"d41d8cd98f00b204e9800998ecf8427e"'
        assert by_name["a.zip-1"].etag == f'"{hashlib.md5(b"a.zip-1").hexdigest()}"'
        assert by_name["a.zip-1"].size == len("a.zip-1")

    asyncio.run(run())


def test_pages_are_contiguous_for_every_page_size(tmp_path: Path) -> None:
    names = [
        f"{stem}{tail}" for stem, tail in itertools.product(["x", "x.zip", "y"], ["", ".delta", "-1", "0"])
    ]

    async def run() -> None:
        layout = await _fill(tmp_path, names)
        for size in range(1, len(names) + 2):
            assert await _pages(layout, size) == sorted(names, key=physical_key)

    asyncio.run(run())
