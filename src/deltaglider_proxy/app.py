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
from deltaglider_proxy.admin.api import AdminApi
from deltaglider_proxy.admin.routes import AdminRoutes
from deltaglider_proxy.admin.state import AdminState
from deltaglider_proxy.auth.access import AccessControl
from deltaglider_proxy.auth.bootstrap import resolve_bootstrap
from deltaglider_proxy.auth.clientip import ClientIpResolver, parse_cidrs
from deltaglider_proxy.auth.credentials import resolve_credentials
from deltaglider_proxy.auth.ratelimit import RateLimiter
from deltaglider_proxy.auth.sessions import SessionStore
from deltaglider_proxy.config.load import RuntimeSettings, Snapshot, load_snapshot
from deltaglider_proxy.config.model import AccessConfig, FilesystemBackendConfig
from deltaglider_proxy.engine.background import BackgroundEncoder
from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.eligibility import CompressionPolicies
from deltaglider_proxy.engine.multipart import MultipartStore
from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.spool import Spool
from deltaglider_proxy.iam.config_watch import DeclarativeWatcher
from deltaglider_proxy.iam.declarative import Plan
from deltaglider_proxy.iam.sealed import parse_key
from deltaglider_proxy.iam.service import IamService
from deltaglider_proxy.iam.store import DB_FILE
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
    iam = await open_iam(snapshot)
    audit = AuditRing(ring_size_from_env(), mirror=mirror_path_from_env())
    if config.access.iam_mode == "declarative":
        await reconcile_declared(snapshot, iam, audit)
    access = AccessControl(credentials)
    if iam is not None:
        iam.on_rebuild(access.use_index)
        iam.start_watching()
    runtime = snapshot.runtime
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
        audit=audit,
        metrics=metrics,
        storage_type=storage_types(config.storage),
        access=access,
        limiter=RateLimiter(
            runtime.rate_limit_max_attempts, runtime.rate_limit_window_secs, runtime.rate_limit_lockout_secs
        ),
        client_ips=client_ip_resolver(runtime),
    )
    observe(metrics, engine, services.audit)
    services.limiter.on_lockout = lambda surface: metrics.rate_limit_lockouts.labels(surface=surface).inc()
    metrics.iam_users.set_function(lambda: access.index.user_count)
    if config.advanced.layout_access:
        log.warning(
            "layout access is enabled: requests with x-deltaglider-layout: raw read and write stored "
            "objects (reference.bin, *.delta) directly; only trusted proxies should write here"
        )
    if config.advanced.delta_encoding == "background":
        engine.background = BackgroundEncoder(engine.deltas, state / "deferred")
        engine.deltas.deferrer = engine.background
        await engine.background.start()
    sweeper = asyncio.create_task(_sweep_forever(multipart, services.limiter))
    cache_monitor = asyncio.create_task(monitor_cache(references))
    api = admin_api(snapshot, services, iam)
    watcher = watch_config(snapshot, iam, api)
    admin = AdminRoutes(services, api)
    try:
        yield Runtime(services, backend, S3Gateway(services), admin)
    finally:
        sweeper.cancel()
        cache_monitor.cancel()
        if watcher is not None:
            await watcher.close()
        await admin.metrics.close()
        services.audit.close()
        if iam is not None:
            await iam.close()
        await services.quotas.close()
        if engine.background is not None:
            await engine.background.close()
        await backend.close()


def admin_api(snapshot: Snapshot, services: Services, iam: IamService | None) -> AdminApi:
    config = snapshot.config
    runtime = snapshot.runtime
    bootstrap = resolve_bootstrap(os.environ, config.advanced.bootstrap_password_hash, iam_db_path().parent)
    sessions = SessionStore(runtime.session_ttl_hours * 3600, runtime.session_idle_minutes * 60)
    services.metrics.admin_sessions.set_function(sessions.live)
    state = AdminState(
        services,
        iam,
        bootstrap,
        sessions,
        tls_enabled=config.advanced.tls.enabled,
        iam_mode=config.access.iam_mode,
        declared_users=config.access.iam_users,
        declared_groups=config.access.iam_groups,
    )
    return AdminApi(state)


def iam_db_path() -> Path:
    """Next to the config file named by DGP_CONFIG, else in the working directory (§3.8)."""
    config = os.environ.get("DGP_CONFIG")
    return (Path(config).parent if config else Path.cwd()) / DB_FILE


async def open_iam(snapshot: Snapshot) -> IamService | None:
    path = iam_db_path()
    key_text = snapshot.config.advanced.config_db_key
    if key_text is None:
        if path.exists():
            raise ValueError(
                f"{path} exists but no key is configured: set DGP_CONFIG_DB_KEY (or advanced.config_db_key) "
                "to the key it was written with"
            )
        log.info("no DGP_CONFIG_DB_KEY: IAM users are disabled, S3 uses the bootstrap credentials")
        return None
    service = await IamService.open(path, parse_key(key_text))
    log.info("IAM database %s open (%d users)", path, service.index.user_count)
    return service


async def reconcile_declared(snapshot: Snapshot, iam: IamService | None, audit: AuditRing) -> None:
    if iam is None:
        raise ValueError(
            "access.iam_mode: declarative requires the encrypted IAM database: set DGP_CONFIG_DB_KEY "
            "(32 random bytes, e.g. `openssl rand -hex 32`)"
        )
    access = snapshot.config.access
    audit_plan(audit, await iam.reconcile(access.iam_users, access.iam_groups))


def audit_plan(audit: AuditRing, result: Plan) -> None:
    for kind, entries in (
        ("user_create", [u.name for u in result.users_create]),
        ("user_update", [u.name for _, u in result.users_update]),
        ("user_delete", [u.name for u in result.users_delete]),
        ("group_create", [g.name for g in result.groups_create]),
        ("group_update", [g.name for _, g in result.groups_update]),
        ("group_delete", [g.name for g in result.groups_delete]),
    ):
        for name in entries:
            audit.record(f"iam_reconcile_{kind}", user="declarative", target=name)


def watch_config(snapshot: Snapshot, iam: IamService | None, api: AdminApi) -> DeclarativeWatcher | None:
    """Hot IAM-as-code: only when there is a config file and an IAM database to apply it to."""
    if iam is None or snapshot.source is None:
        return None
    state = api.state

    def take(access: AccessConfig) -> None:
        state.iam_mode = access.iam_mode
        state.declared_users = access.iam_users
        state.declared_groups = access.iam_groups

    watcher = DeclarativeWatcher(
        snapshot.source, iam, take, lambda plan: audit_plan(state.services.audit, plan)
    )
    watcher.start()
    return watcher


def client_ip_resolver(runtime: RuntimeSettings) -> ClientIpResolver:
    try:
        cidrs = parse_cidrs(runtime.trusted_proxy_cidrs)
    except ValueError as exc:
        raise ValueError(f"DGP_TRUSTED_PROXY_CIDRS: {exc}") from None
    if runtime.trust_proxy_headers and not cidrs:
        log.warning(
            "DGP_TRUST_PROXY_HEADERS=true without DGP_TRUSTED_PROXY_CIDRS: any client can claim any IP "
            "with X-Forwarded-For; list your proxies' networks in DGP_TRUSTED_PROXY_CIDRS"
        )
    return ClientIpResolver(runtime.trust_proxy_headers, cidrs)


async def _sweep_forever(multipart: MultipartStore, limiter: RateLimiter) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
        limiter.sweep()
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
