"""What every S3 operation is handed: the shared services and the current call."""

from __future__ import annotations

from dataclasses import dataclass

from deltaglider_proxy.auth.credentials import Credentials
from deltaglider_proxy.config.load import RuntimeSettings
from deltaglider_proxy.engine.multipart import MultipartStore
from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.engine.spool import Spool
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


@dataclass
class Call:
    """One S3 request on its way through the edge."""

    services: Services
    req: S3Request
    auth: AuthContext | None = None

    @property
    def bucket(self) -> str:
        assert self.req.bucket is not None
        return self.req.bucket

    @property
    def key(self) -> str:
        assert self.req.key is not None
        return self.req.key
