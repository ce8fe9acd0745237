"""The reference-cache monitor's warnings (control-plane.md §9.1)."""

from __future__ import annotations

from deltaglider_proxy.engine.references import CacheStats
from deltaglider_proxy.observability.cache_monitor import cache_warnings

MIB = 1024 * 1024


def stats(hits: int = 0, misses: int = 0, size: int = 0, max_bytes: int = 100 * MIB) -> CacheStats:
    return CacheStats(hits, misses, size, max_bytes, 1)


def test_quiet_when_healthy() -> None:
    assert cache_warnings(stats(100, 5, 10 * MIB), stats(200, 10, 20 * MIB)) == []


def test_warns_above_ninety_percent_full() -> None:
    [warning] = cache_warnings(None, stats(size=91 * MIB))
    assert "91% full" in warning and "DGP_CACHE_MB" in warning
    assert cache_warnings(None, stats(size=90 * MIB)) == []
    assert cache_warnings(None, stats(size=5, max_bytes=0)) == []  # cache disabled


def test_miss_rate_is_judged_per_interval_with_a_minimum_of_ten_lookups() -> None:
    before = stats(hits=1000, misses=0)
    [warning] = cache_warnings(before, stats(hits=1004, misses=6))
    assert "missed 6 of 10" in warning
    assert cache_warnings(before, stats(hits=1000, misses=9)) == []  # 9 lookups: too few
    assert cache_warnings(before, stats(hits=1005, misses=5)) == []  # exactly half: not more than
