"""What the admin API handlers share: services, the IAM service, sessions, bootstrap password."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest
from deltaglider_proxy.auth.bootstrap import BootstrapPassword
from deltaglider_proxy.auth.sessions import Session, SessionStore
from deltaglider_proxy.iam.service import IamService
from deltaglider_proxy.s3api.context import Services


@dataclass
class AdminState:
    services: Services
    iam: IamService | None
    bootstrap: BootstrapPassword
    sessions: SessionStore
    tls_enabled: bool = False
    iam_mode: str = "gui"  # access.iam_mode; "declarative" locks IAM mutations (§3.9)
    declared_users: list[dict[str, Any]] = field(default_factory=list)  # access.iam_users
    declared_groups: list[dict[str, Any]] = field(default_factory=list)  # access.iam_groups

    def require_iam(self) -> IamService:
        if self.iam is None:
            raise ApiError(
                404,
                "no_config_db",
                "IAM users need the encrypted IAM database: set DGP_CONFIG_DB_KEY "
                "(32 random bytes, e.g. `openssl rand -hex 32`) and restart",
            )
        return self.iam

    def declarative_gate(self, req: ApiRequest) -> None:
        if self.iam_mode == "declarative" and req.method in ("POST", "PUT", "PATCH", "DELETE"):
            raise ApiError(
                403,
                "iam_declarative",
                "IAM is managed via the YAML document (access.iam_mode: declarative). Edit your config file "
                "and POST the full document to /api/admin/config/apply instead of mutating "
                "users/groups/providers through this endpoint.",
            )

    def audit(self, action: str, session: Session | None, req: ApiRequest, target: str = "") -> None:
        self.services.audit.record(
            action,
            user=session.principal if session is not None else "",
            target=target,
            ip=req.client_ip,
            ua=req.user_agent(),
            path=req.path,
        )

    def secure_cookie(self, req: ApiRequest) -> bool:
        explicit = self.services.runtime.secure_cookies
        if explicit is not None:
            return explicit
        if self.tls_enabled:
            return True
        forwarded_https = req.headers.get("x-forwarded-proto", "").lower() == "https"
        return forwarded_https and self.services.client_ips.behind_trusted_proxy(req.peer)
