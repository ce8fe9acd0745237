"""The reference-cache monitor of control-plane.md §9.1: every 60 s, WARN when the cache is more
than 90 % full, or when more than half of the last interval's lookups (at least 10) missed."""

from __future__ import annotations

import asyncio
import logging

from deltaglider_proxy.engine.references import CacheStats, ReferenceCache

log = logging.getLogger(__name__)
MONITOR_INTERVAL_SECONDS = 60.0
FULL_RATIO = 0.9
MISS_RATIO = 0.5
MIN_LOOKUPS = 10


def cache_warnings(previous: CacheStats | None, now: CacheStats) -> list[str]:
    """What to warn about, given the readings at the start and the end of one interval."""
    warnings = []
    if now.max_bytes > 0 and now.size_bytes / now.max_bytes > FULL_RATIO:
        warnings.append(
            f"reference cache is {100 * now.size_bytes / now.max_bytes:.0f}% full "
            f"({now.size_bytes} of {now.max_bytes} bytes); consider raising DGP_CACHE_MB"
        )
    hits = now.hits - (previous.hits if previous else 0)
    misses = now.misses - (previous.misses if previous else 0)
    lookups = hits + misses
    if lookups >= MIN_LOOKUPS and misses / lookups > MISS_RATIO:
        warnings.append(
            f"reference cache missed {misses} of {lookups} lookups in the last interval; "
            "each miss fetches a whole reference from the backend"
        )
    return warnings


async def monitor_cache(cache: ReferenceCache, interval: float = MONITOR_INTERVAL_SECONDS) -> None:
    previous: CacheStats | None = cache.stats()
    while True:
        await asyncio.sleep(interval)
        now = cache.stats()
        for warning in cache_warnings(previous, now):
            log.warning("%s", warning)
        previous = now
