"""Brute-force limiter (control-plane.md §5.1): fixed window from the first failure, lockout,
progressive delay; keyed by (surface, client IP) so S3 failures never lock admins out [D].

Per process and in memory, behind this one class, so a shared store can replace it later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("deltaglider_proxy.security")
SURFACES = frozenset({"s3", "admin_login", "oauth", "recover"})


@dataclass
class _Entry:
    count: int
    window_start: float
    lockout_start: float | None = None


class RateLimiter:
    def __init__(
        self,
        max_attempts: int = 100,
        window_seconds: float = 300.0,
        lockout_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_attempts = max_attempts
        self.window_seconds = window_seconds
        self.lockout_seconds = lockout_seconds
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()
        # Told the surface of every lockout that starts (the lockout metric).
        self.on_lockout: Callable[[str], None] | None = None

    def record_failure(self, surface: str, ip: str, reason: str = "") -> bool:
        """Count one failure; True when this failure started a lockout."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get((surface, ip))
            if entry is not None and entry.lockout_start is not None:
                if now - entry.lockout_start < self.lockout_seconds:
                    return False
                entry = None
            if entry is None or now - entry.window_start >= self.window_seconds:
                entry = _Entry(0, now)
                self._entries[(surface, ip)] = entry
            entry.count += 1
            count = entry.count
            if count >= self.max_attempts:
                entry.lockout_start = now
        if count >= self.max_attempts:
            log.warning(
                "SECURITY | event=brute_force_lockout | surface=%s | ip=%s | attempts=%d | reason=%s",
                surface,
                ip,
                count,
                reason,
            )
            if self.on_lockout is not None:
                self.on_lockout(surface)
            return True
        if count >= 3:
            log.warning(
                "SECURITY | event=repeated_auth_failure | surface=%s | ip=%s | attempts=%d | reason=%s",
                surface,
                ip,
                count,
                reason,
            )
        return False

    def record_success(self, surface: str, ip: str) -> None:
        with self._lock:
            self._entries.pop((surface, ip), None)

    def is_limited(self, surface: str, ip: str) -> bool:
        with self._lock:
            entry = self._entries.get((surface, ip))
            locked = (
                entry is not None
                and entry.lockout_start is not None
                and self._clock() - entry.lockout_start < self.lockout_seconds
            )
        if locked:
            log.warning(
                "SECURITY | event=brute_force_blocked | surface=%s | ip=%s | action=blocked", surface, ip
            )
        return locked

    def delay_seconds(self, surface: str, ip: str) -> float:
        """count ≤ 10 → 0; else min(100 ms × 2^min(count−10, 6), 5 s) — upstream's curve."""
        with self._lock:
            entry = self._entries.get((surface, ip))
            count = entry.count if entry is not None else 0
        if count <= 10:
            return 0.0
        return float(min(0.1 * 2.0 ** min(count - 10, 6), 5.0))

    def sweep(self) -> int:
        """Drop entries neither locked nor inside their window; returns how many went."""
        now = self._clock()
        with self._lock:
            stale = [
                k
                for k, e in self._entries.items()
                if (e.lockout_start is None or now - e.lockout_start >= self.lockout_seconds)
                and now - e.window_start >= self.window_seconds
            ]
            for k in stale:
                del self._entries[k]
        return len(stale)
