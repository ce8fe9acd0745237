"""The reference cache: byte budget with LRU eviction, pinning, verification of what it loads."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from deltaglider_proxy.engine.references import Loader, ReferenceCache, ReferenceMismatch


def _loader(data: bytes, calls: list[int]) -> Loader:
    async def load(path: Path) -> tuple[int, str]:
        calls.append(1)
        await asyncio.to_thread(path.write_bytes, data)
        return len(data), hashlib.sha256(data).hexdigest()

    return load


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hits_misses_and_byte_budget(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ReferenceCache(tmp_path / "refs", max_bytes=250)
        cache.start()
        a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
        calls: list[int] = []
        for _ in range(3):
            async with cache.pinned("bk", "p/a", _sha(a), _loader(a, calls)) as path:
                assert path.read_bytes() == a
        assert len(calls) == 1 and cache.stats().hits == 2 and cache.stats().misses == 1
        async with cache.pinned("bk", "p/b", _sha(b), _loader(b, calls)):
            pass
        async with cache.pinned("bk", "p/a", _sha(a), _loader(a, calls)):
            pass  # a is now the most recently used
        async with cache.pinned("bk", "p/c", _sha(c), _loader(c, calls)):
            pass
        stats = cache.stats()
        assert stats.size_bytes <= 250 and stats.entries == 2
        assert len(list((tmp_path / "refs").iterdir())) == 2
        before = len(calls)
        async with cache.pinned("bk", "p/a", _sha(a), _loader(a, calls)):
            pass
        assert len(calls) == before  # a survived; b (least recently used) went

    asyncio.run(scenario())


def test_pinned_entry_outlives_eviction(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ReferenceCache(tmp_path / "refs", max_bytes=100)
        cache.start()
        a, b = b"a" * 80, b"b" * 80
        calls: list[int] = []
        async with cache.pinned("bk", "a", _sha(a), _loader(a, calls)) as held:
            async with cache.pinned("bk", "b", _sha(b), _loader(b, calls)):
                assert held.read_bytes() == a  # evicted from the budget, still readable
            cache.evict("bk", "a")
            assert held.exists()
        assert not held.exists()

    asyncio.run(scenario())


def test_wrong_bytes_are_refused_and_not_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ReferenceCache(tmp_path / "refs", max_bytes=1000)
        cache.start()
        with pytest.raises(ReferenceMismatch):
            async with cache.pinned("bk", "p", _sha(b"expected"), _loader(b"corrupt", [])):
                pass
        assert list((tmp_path / "refs").iterdir()) == []
        assert cache.stats().entries == 0

    asyncio.run(scenario())


def test_adopt_links_without_loading(tmp_path: Path) -> None:
    async def scenario() -> None:
        cache = ReferenceCache(tmp_path / "refs", max_bytes=1000)
        cache.start()
        source = tmp_path / "body"
        source.write_bytes(b"seed")
        await cache.adopt("bk", "p", _sha(b"seed"), source)
        calls: list[int] = []
        async with cache.pinned("bk", "p", _sha(b"seed"), _loader(b"seed", calls)) as path:
            assert path.read_bytes() == b"seed"
        assert calls == [] and source.exists()

    asyncio.run(scenario())
