"""The ASGI application: S3 on ``/``, the control plane on ``/_/``, built from one config snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from deltaglider_proxy.admin.access_log import serve_logged
from deltaglider_proxy.admin.routes import AdminRoutes
from deltaglider_proxy.auth.credentials import resolve_credentials
from deltaglider_proxy.config.load import Snapshot, load_snapshot
from deltaglider_proxy.config.model import FilesystemBackendConfig
from deltaglider_proxy.engine.background import BackgroundEncoder
from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.eligibility import CompressionPolicies
from deltaglider_proxy.engine.multipart import MultipartStore
from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.spool import Spool
from deltaglider_proxy.observability.audit import AuditRing, mirror_path_from_env, ring_size_from_env
from deltaglider_proxy.observability.cache_monitor import monitor_cache
from deltaglider_proxy.observability.instrumented import instrument
from deltaglider_proxy.observability.logs import configure
from deltaglider_proxy.observability.wiring import new_metrics, observe, storage_types
from deltaglider_proxy.policy.public import PublicPrefixes
from deltaglider_proxy.policy.quotas import QuotaGuard
from deltaglider_proxy.policy.routing import build_storage
from deltaglider_proxy.s3api.checksums import new_checksum
from deltaglider_proxy.s3api.context import Services
from deltaglider_proxy.s3api.gateway import S3Gateway
from deltaglider_proxy.s3api.http import Receive, Scope, Send
from deltaglider_proxy.storage.base import Backend

log = logging.getLogger(__name__)
SWEEP_INTERVAL_SECONDS = 300


def state_dir(snapshot: Snapshot) -> Path:
    """The one local directory the proxy keeps its own state in."""
    import os

    if os.environ.get("DGP_STATE_DIR"):
        return Path(os.environ["DGP_STATE_DIR"])
    storage = snapshot.config.storage
    candidates = list(storage.backends) if storage.backends else [storage.singleton_backend()]
    paths = [Path(b.path) for b in candidates if isinstance(b, FilesystemBackendConfig)]
    return (paths[0] if paths else Path("./data")) / ".deltaglider"


def build_backend(snapshot: Snapshot) -> Backend:
    # Encryption work files (ciphertext in transit, legacy objects being authenticated) stay in
    # the private state dir, beside the reference cache (both mode 0700).
    return build_storage(snapshot.config.storage, state_dir(snapshot) / "crypt")


@dataclass
class Runtime:
    services: Services
    backend: Backend
    gateway: S3Gateway
    admin: AdminRoutes


@contextlib.asynccontextmanager
async def running(snapshot: Snapshot) -> AsyncIterator[Runtime]:
    config = snapshot.config
    state = state_dir(snapshot)
    # Plaintext lives here (spool, parts, reference cache) even when backends are encrypted.
    await asyncio.to_thread(state.mkdir, 0o700, True, True)
    await asyncio.to_thread(os.chmod, state, 0o700)
    metrics = new_metrics(config.storage)
    backend = instrument(build_backend(snapshot), metrics)
    start = getattr(backend, "start", None)
    if start is not None:
        await start()
    spool = Spool(
        Path(config.advanced.spool_dir) if config.advanced.spool_dir else state / "spool",
        config.advanced.spool_max_bytes,
    )
    await asyncio.to_thread(spool.start)
    codec = Codec(
        concurrency=config.advanced.codec_concurrency or max(4 * (os.cpu_count() or 1), 16),
        timeout_seconds=snapshot.runtime.codec_timeout_seconds,
        max_output_bytes=config.advanced.max_object_size,
    )
    references = ReferenceCache(state / "references", config.advanced.cache_size_mb * 1024 * 1024)
    await asyncio.to_thread(references.start)
    engine = ObjectEngine(
        backend,
        spool,
        codec=codec,
        references=references,
        policies=CompressionPolicies(config.advanced.max_delta_ratio, config.storage.buckets),
        max_object_size=config.advanced.max_object_size,
    )
    multipart = MultipartStore(
        state / "multipart",
        engine,
        max_uploads=snapshot.runtime.max_multipart_uploads,
        idle_ttl_seconds=snapshot.runtime.multipart_idle_ttl_hours * 3600,
        checksum_factory=new_checksum,
    )
    await asyncio.to_thread(multipart.start)
    credentials = resolve_credentials(
        config.access.access_key_id, config.access.secret_access_key, config.access.authentication, state
    )
    domains = tuple(
        d.strip().lower()
        for d in os.environ.get("DGP_VIRTUAL_HOST_DOMAINS", "localhost").split(",")
        if d.strip()
    )
    services = Services(
        engine=engine,
        multipart=multipart,
        spool=spool,
        credentials=credentials,
        runtime=snapshot.runtime,
        max_object_size=config.advanced.max_object_size,
        virtual_host_domains=domains,
        public=PublicPrefixes(config.storage.buckets),
        quotas=QuotaGuard(config.storage.buckets, backend.usage_bytes),
        layout_access=config.advanced.layout_access,
        audit=AuditRing(ring_size_from_env(), mirror=mirror_path_from_env()),
        metrics=metrics,
        storage_type=storage_types(config.storage),
    )
    observe(metrics, engine, services.audit)
    if config.advanced.layout_access:
        log.warning(
            "layout access is enabled: requests with x-deltaglider-layout: raw read and write stored "
            "objects (reference.bin, *.delta) directly; only trusted proxies should write here"
        )
    if config.advanced.delta_encoding == "background":
        engine.background = BackgroundEncoder(engine.deltas, state / "deferred")
        engine.deltas.deferrer = engine.background
        await engine.background.start()
    sweeper = asyncio.create_task(_sweep_forever(multipart))
    cache_monitor = asyncio.create_task(monitor_cache(references))
    admin = AdminRoutes(services)
    try:
        yield Runtime(services, backend, S3Gateway(services), admin)
    finally:
        sweeper.cancel()
        cache_monitor.cancel()
        await admin.metrics.close()
        services.audit.close()
        await services.quotas.close()
        if engine.background is not None:
            await engine.background.close()
        await backend.close()


async def _sweep_forever(multipart: MultipartStore) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
        try:
            dropped = await multipart.sweep()
            if dropped:
                log.info("dropped %d idle multipart uploads", dropped)
        except Exception:
            log.exception("multipart sweep failed")


class Application:
    """ASGI entry point; the config snapshot is loaded from the environment at lifespan start."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot
        self._runtime: Runtime | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        if self._runtime is None:
            await self._startup()
        assert self._runtime is not None
        if scope["path"].startswith("/_/"):
            await serve_logged(self._runtime.admin, scope, receive, send)
        else:
            await self._runtime.gateway(scope, receive, send)

    async def _startup(self) -> None:
        snapshot = self._snapshot or load_snapshot()
        configure(snapshot.config.advanced.log_level, snapshot.runtime.log_format)
        self._runtime = await self._stack.enter_async_context(running(snapshot))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> Application:
    return Application()
