"""``GET /_/health`` (liveness) and ``GET /_/ready`` (readiness), control-plane.md §1.2, §6.7.

Health never probes anything: it answers while the process serves requests, so an orchestrator
does not restart a healthy proxy because its backend is down. Readiness probes every storage
backend (a bounded, retried, optionally cached call) and the IAM store, and answers 503 when
either cannot serve, so a load balancer takes this instance out of rotation until they return.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from deltaglider_proxy.admin.jsonresp import json_response
from deltaglider_proxy.observability.instrumented import named_backends
from deltaglider_proxy.s3api.context import Services
from deltaglider_proxy.s3api.http import Response
from deltaglider_proxy.storage.base import Backend

log = logging.getLogger(__name__)
RETRY_PAUSE_SECONDS = 0.2
# IAM store states that mean "cannot authorise requests": the instance is not ready.
_CONFIG_DB_NOT_READY = frozenset({"locked"})


def health(services: Services) -> Response:
    cache = services.engine.references.stats()
    utilisation = round(100.0 * cache.size_bytes / cache.max_bytes, 2) if cache.max_bytes else 0.0
    return json_response(
        200,
        {
            "status": "healthy",
            "backend": "ready",
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cache_size_bytes": cache.size_bytes,
            "cache_max_bytes": cache.max_bytes,
            "cache_entries": cache.entries,
            "cache_utilization_pct": utilisation,
        },
    )


@dataclass(frozen=True)
class ReadySettings:
    timeout_seconds: float = 3.0  # DGP_READY_TIMEOUT_SECS, per attempt
    retries: int = 2  # DGP_READY_RETRIES, attempts after the first failed one
    cache_ttl_seconds: float = 0.0  # DGP_READY_CACHE_TTL_SECS; 0 probes on every request


@dataclass(frozen=True)
class _Verdict:
    backend: str  # ready | degraded | unreachable | timeout
    backends: dict[str, str]
    at: float


async def _probe_once(backend: Backend) -> None:
    check = getattr(backend, "check", None)
    if check is not None:
        await check()
    else:
        await backend.list_buckets()


async def _probe(name: str, backend: Backend, settings: ReadySettings) -> str:
    """``ready``, ``degraded`` (answered after a failed attempt), ``timeout`` or ``unreachable``."""
    outcome = "unreachable"
    for attempt in range(settings.retries + 1):
        if attempt:
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        try:
            await asyncio.wait_for(_probe_once(backend), settings.timeout_seconds)
        except TimeoutError:
            outcome = "timeout"
            log.warning(
                "readiness: backend %s attempt %d failed: no answer within %ss",
                name,
                attempt + 1,
                settings.timeout_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            outcome = "unreachable"
            log.warning("readiness: backend %s attempt %d failed: %s", name, attempt + 1, exc)
        else:
            return "ready" if attempt == 0 else "degraded"
    return outcome


_WORST_FIRST = ("unreachable", "timeout", "degraded", "ready")


class Readiness:
    def __init__(
        self,
        services: Services,
        settings: ReadySettings,
        config_db: Callable[[], str] = lambda: "absent",
    ) -> None:
        self._services = services
        self._settings = settings
        # ready | locked | absent (no IAM store configured).
        self._config_db = config_db
        self._last: _Verdict | None = None
        self._inflight: asyncio.Task[_Verdict] | None = None

    async def _verdict(self) -> _Verdict:
        named = named_backends(self._services.engine.backend)
        names = sorted(named)
        states = await asyncio.gather(*(_probe(n, named[n], self._settings) for n in names))
        by_name = dict(zip(names, states, strict=True))
        worst = min(states, key=_WORST_FIRST.index) if states else "ready"
        return _Verdict(worst, by_name, time.monotonic())

    async def _fresh(self) -> _Verdict:
        # Concurrent probes from several load balancers share one round of backend calls.
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._verdict())
        verdict = await asyncio.shield(self._inflight)
        self._last = verdict
        return verdict

    async def response(self) -> Response:
        ttl = self._settings.cache_ttl_seconds
        last = self._last
        cached = last is not None and ttl > 0 and time.monotonic() - last.at < ttl
        verdict = last if cached and last is not None else await self._fresh()
        config_db = self._config_db()
        ready = verdict.backend in ("ready", "degraded") and config_db not in _CONFIG_DB_NOT_READY
        backend = "cached" if cached and verdict.backend in ("ready", "degraded") else verdict.backend
        return json_response(
            200 if ready else 503,
            {
                "status": "ready" if ready else "not_ready",
                "backend": backend,
                "config_db": config_db,
                "backends": verdict.backends,
            },
        )
