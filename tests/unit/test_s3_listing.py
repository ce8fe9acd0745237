"""LogicalOrder: physical (S3) listing order turned into the Backend contract's logical order."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltaglider_proxy.storage.base import CommonPrefix, StorageError, StoredObject, logical_sort_key
from deltaglider_proxy.storage.s3_listing import Entry, LogicalOrder, raw_name

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def obj(name: str) -> StoredObject:
    return StoredObject(name=name, size=0, modified=NOW, record_loaded=False)


def label(entry: Entry) -> str:
    return f"CP:{entry.name}" if isinstance(entry, CommonPrefix) else entry.name


def physical_stream(names: set[str], prefix: str, start_after: str, delimiter: str | None) -> list[Entry]:
    """What ListObjectsV2 returns over all pages: names > start_after under prefix, byte order,
    with delimiter roll-ups in place of the names they cover."""
    out: dict[str, Entry] = {}
    for name in names:
        if not name.startswith(prefix) or raw_name(name) <= raw_name(start_after):
            continue
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            rolled = prefix + rest[: rest.index(delimiter) + 1]
            out[rolled] = CommonPrefix(rolled)
        else:
            out[name] = obj(name)
    return [out[name] for name in sorted(out, key=raw_name)]


def expected(names: set[str], prefix: str, start_after: str, delimiter: str | None) -> list[str]:
    """The contract itself: logical order, ties x before x.delta, nothing at or before start_after."""
    keyed: dict[str, tuple[bytes, bytes]] = {}
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            rolled = prefix + rest[: rest.index(delimiter) + 1]
            keyed["CP:" + rolled] = (raw_name(rolled), raw_name(rolled))
        else:
            keyed[name] = (logical_sort_key(name), raw_name(name))
    after = raw_name(start_after)
    return [name for name, key in sorted(keyed.items(), key=lambda item: item[1]) if key[0] > after]


def reorder(
    names: set[str],
    prefix: str = "",
    start_after: str = "",
    delimiter: str | None = None,
    page: int = 1000,
    buffer_limit: int | None = None,
) -> tuple[list[str], int]:
    """Drive LogicalOrder as S3Backend.list does; returns (labels, largest heap seen)."""
    order = LogicalOrder(prefix, start_after, delimiter)
    stream = physical_stream(names, prefix, start_after, delimiter)
    out: list[str] = []
    largest = 0
    for at in range(0, len(stream), page):
        for entry in stream[at : at + page]:
            order.add(entry)
        out.extend(label(e) for e in order.ready())
        largest = max(largest, len(order))
        if buffer_limit is not None and len(order) > buffer_limit:
            for name in order.blocking_names():
                order.add_lookahead(name, obj(name) if name in names else None)
            out.extend(label(e) for e in order.ready())
            # Once every blocking name is settled, nothing may stay held.
            assert len(order) == 0
    out.extend(label(e) for e in order.finish())
    return out, largest


TRICKY = {"a.zip-1", "a.zip.delta", "a.zip0", "a/", "a/b", "reference.bin", "a.zip", "a-b/c", "a.delta"}


def test_delta_sorts_by_its_logical_name() -> None:
    names = {"a.zip-1", "a.zip.delta", "a.zip0"}
    assert reorder(names)[0] == ["a.zip.delta", "a.zip-1", "a.zip0"]


def test_plain_name_comes_before_its_delta_twin() -> None:
    assert reorder({"x.delta", "x", "x-1"})[0] == ["x", "x.delta", "x-1"]


@pytest.mark.parametrize("delimiter", [None, "/"])
@pytest.mark.parametrize("start_after", ["", "a", "a.zip", "a.zip-0", "a/", "a/b", "zzz"])
@pytest.mark.parametrize("prefix", ["", "a", "a.zip", "a/"])
def test_tricky_names_match_the_contract(prefix: str, start_after: str, delimiter: str | None) -> None:
    want = expected(TRICKY, prefix, start_after, delimiter)
    for page in (1, 2, 1000):
        assert reorder(TRICKY, prefix, start_after, delimiter, page)[0] == want
        assert reorder(TRICKY, prefix, start_after, delimiter, page, buffer_limit=0)[0] == want


def test_long_run_below_a_possible_delta_is_held_without_lookahead() -> None:
    names = {f"app-{n:04d}.zip" for n in range(500)}
    out, largest = reorder(names, page=10)
    assert out == sorted(names)
    assert largest == 500  # "app.delta" could still come until the listing ends


def test_lookahead_keeps_the_heap_bounded_and_the_order_right() -> None:
    names = {f"app-{n:04d}.zip" for n in range(500)} | {"app.delta", "app-0100.delta"}
    out, largest = reorder(names, page=10, buffer_limit=25)
    assert out == expected(names, "", "", None)
    assert out[0] == "app.delta"
    assert largest <= 25 + 10


def test_prefix_shorter_than_the_delta_name_still_bounds() -> None:
    # With prefix "app-", "app.delta" can never be listed, so nothing waits for it.
    names = {f"app-{n:04d}.zip" for n in range(100)}
    _out, largest = reorder(names, prefix="app-", page=10)
    assert largest <= 10


def test_a_delta_at_or_before_start_after_holds_nothing() -> None:
    # "app.delta" would sort as "app", which start_after already excludes.
    names = {f"app-{n:04d}.zip" for n in range(100)}
    out, largest = reorder(names, start_after="app", page=10)
    assert out == sorted(names) and largest <= 10


def test_names_out_of_byte_order_are_refused() -> None:
    order = LogicalOrder()
    order.add(obj("b"))
    order.add(obj("b"))  # a repeated boundary entry is tolerated
    with pytest.raises(StorageError, match="byte order"):
        order.add(obj("a"))


_alphabet = st.sampled_from(["a", "b", "-", ".", "/", ".delta", "0", "é", " "])
_names = st.lists(st.lists(_alphabet, min_size=1, max_size=6).map("".join), max_size=25).map(set)
_cursor = st.lists(_alphabet, max_size=4).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    names=_names,
    prefix=st.sampled_from(["", "a", "a.", "a/", "a-"]),
    start_after=_cursor,
    delimiter=st.sampled_from([None, "/"]),
    page=st.integers(1, 5),
    buffer_limit=st.one_of(st.none(), st.integers(0, 4)),
)
def test_any_names_come_out_in_contract_order(
    names: set[str], prefix: str, start_after: str, delimiter: str | None, page: int, buffer_limit: int | None
) -> None:
    out, _largest = reorder(names, prefix, start_after, delimiter, page, buffer_limit)
    assert out == expected(names, prefix, start_after, delimiter)


@pytest.mark.parametrize("names", [{"a-", "a--"}, {"aa ", "aa--"}])
def test_lookahead_settles_a_delta_that_sorts_between_held_entries(names: set[str]) -> None:
    # Found by the property test above: a possible "a-.delta" blocks "a--" but not "a-".
    out, _largest = reorder(names, page=1, buffer_limit=1)
    assert out == expected(names, "", "", None)
