"""What every S3 operation is handed: the shared services and the current call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deltaglider_proxy.auth.access import AccessControl
from deltaglider_proxy.auth.clientip import ClientIpResolver
from deltaglider_proxy.auth.credentials import Credentials
from deltaglider_proxy.auth.ratelimit import RateLimiter
from deltaglider_proxy.config.load import RuntimeSettings
from deltaglider_proxy.engine.multipart import MultipartStore
from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.engine.spool import Spool
from deltaglider_proxy.iam.evaluate import Principal
from deltaglider_proxy.observability.audit import AuditRing
from deltaglider_proxy.observability.metrics import Metrics
from deltaglider_proxy.policy.public import PublicPrefixes
from deltaglider_proxy.policy.quotas import QuotaGuard
from deltaglider_proxy.s3api.http import S3Request
from deltaglider_proxy.s3api.sigv4 import AuthContext


@dataclass(frozen=True)
class Services:
    engine: ObjectEngine
    multipart: MultipartStore
    spool: Spool
    credentials: Credentials
    runtime: RuntimeSettings
    max_object_size: int
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    public: PublicPrefixes = field(default_factory=lambda: PublicPrefixes({}))
    quotas: QuotaGuard = field(default_factory=lambda: QuotaGuard({}, _no_usage))
    # advanced.layout_access: honour x-deltaglider-layout: raw (s3api/operations/layout.py).
    layout_access: bool = False
    # The process's audit ring (control-plane.md §10): admin/IAM mutations, logins, S3 writes.
    audit: AuditRing = field(default_factory=AuditRing)
    # The process's metrics registry (control-plane.md §9).
    metrics: Metrics = field(default_factory=lambda: Metrics(version="-", backend_type="filesystem"))
    # bucket (None: no bucket) → "filesystem" | "s3", for the request log line.
    storage_type: Callable[[str | None], str] = lambda bucket: "filesystem"
    # Who may call (control-plane.md §2.1, §3), the shared brute-force limiter (§5) and the one
    # client-IP resolver every consumer uses (§5.4).
    access: AccessControl = field(default_factory=AccessControl.open_mode)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    client_ips: ClientIpResolver = field(default_factory=ClientIpResolver)


async def _no_usage(bucket: str) -> int:
    return 0


@dataclass
class Call:
    """One S3 request on its way through the edge."""

    services: Services
    req: S3Request
    auth: AuthContext | None = None
    # Set for an unsigned request admitted by a public prefix: listings show only these.
    public_prefixes: tuple[str, ...] | None = None
    # Keys a DeleteObjects request removed, one audit entry each (control-plane.md §10.2).
    deleted_keys: list[str] = field(default_factory=list)
    # The IAM principal of a verified request (None in open mode and for public reads), the
    # condition context its checks use, and whether a bucket listing must be filtered per key.
    principal: Principal | None = None
    iam_context: dict[str, str] = field(default_factory=dict)
    list_filtered: bool = False

    @property
    def bucket(self) -> str:
        assert self.req.bucket is not None
        return self.req.bucket

    @property
    def key(self) -> str:
        assert self.req.key is not None
        return self.req.key
