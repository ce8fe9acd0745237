"""The admin JSON API under ``/_/api/``: one route table drives dispatch and the OpenAPI document."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deltaglider_proxy import __version__
from deltaglider_proxy.admin import declarative_api, session_api, users_api
from deltaglider_proxy.admin.audit_endpoint import audit_entries
from deltaglider_proxy.admin.guard import require_admin, require_session
from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest, json_response
from deltaglider_proxy.admin.state import AdminState
from deltaglider_proxy.s3api.http import Receive, Response, Scope, collect_headers, parse_query

log = logging.getLogger(__name__)
Handler = Callable[[AdminState, ApiRequest], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /_/api/admin/users/{id}
    handler: Handler
    summary: str
    auth: str  # "public" | "session" | "admin"
    body: tuple[str, ...] = ()  # JSON body fields, for the OpenAPI document

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "$")


A = "/_/api/admin"


async def _audit(state: AdminState, req: ApiRequest) -> Response:
    limit = req.q("limit")
    return audit_entries(state.services.audit, "" if limit is None else f"limit={limit}")


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{A}/audit", _audit, "Recent audit entries, newest first (?limit=1..500)", "admin"),
    Route(
        "POST", f"{A}/login", session_api.login, "Log in with the bootstrap password", "public", ("password",)
    ),
    Route(
        "POST",
        f"{A}/login-as",
        session_api.login_as,
        "Log in as an admin IAM user",
        "public",
        ("access_key_id", "secret_access_key"),
    ),
    Route("POST", f"{A}/logout", session_api.logout, "End the session", "session"),
    Route("GET", f"{A}/session", session_api.session_status, "Is the session valid?", "public"),
    Route("GET", "/_/api/whoami", session_api.whoami, "Auth mode and the session's user", "public"),
    Route(
        "PUT",
        f"{A}/password",
        session_api.change_password,
        "Rotate the bootstrap password",
        "admin",
        ("current_password", "new_password"),
    ),
    Route("GET", f"{A}/iam/version", session_api.iam_version, "IAM index version (a barrier)", "public"),
    Route("GET", f"{A}/policies", session_api.policies, "Canned permission sets", "public"),
    Route(
        "GET",
        f"{A}/session/s3-credentials",
        session_api.get_s3_credentials,
        "S3 keys of the session",
        "session",
    ),
    Route(
        "PUT",
        f"{A}/session/s3-credentials",
        session_api.put_s3_credentials,
        "Replace the session's S3 keys",
        "session",
        ("endpoint", "region", "bucket", "access_key_id", "secret_access_key"),
    ),
    Route(
        "DELETE",
        f"{A}/session/s3-credentials",
        session_api.delete_s3_credentials,
        "Forget the S3 keys",
        "session",
    ),
    Route("GET", f"{A}/users", users_api.list_users, "List IAM users (no secrets)", "admin"),
    Route(
        "POST",
        f"{A}/users",
        users_api.create_user,
        "Create an IAM user (secret shown once)",
        "admin",
        ("name", "access_key_id", "secret_access_key", "enabled", "permissions"),
    ),
    Route(
        "PUT",
        f"{A}/users/{{id}}",
        users_api.update_user,
        "Update a user",
        "admin",
        ("name", "enabled", "permissions"),
    ),
    Route("DELETE", f"{A}/users/{{id}}", users_api.delete_user, "Delete a user", "admin"),
    Route(
        "POST",
        f"{A}/users/{{id}}/rotate-keys",
        users_api.rotate_keys,
        "Replace a user's key pair",
        "admin",
        ("access_key_id", "secret_access_key"),
    ),
    Route("GET", f"{A}/groups", users_api.list_groups, "List groups", "admin"),
    Route(
        "POST",
        f"{A}/groups",
        users_api.create_group,
        "Create a group",
        "admin",
        ("name", "description", "permissions", "member_ids"),
    ),
    Route(
        "PUT",
        f"{A}/groups/{{id}}",
        users_api.update_group,
        "Update a group",
        "admin",
        ("name", "description", "permissions"),
    ),
    Route("DELETE", f"{A}/groups/{{id}}", users_api.delete_group, "Delete a group", "admin"),
    Route("POST", f"{A}/groups/{{id}}/members", users_api.add_member, "Add a member", "admin", ("user_id",)),
    Route(
        "DELETE",
        f"{A}/groups/{{id}}/members/{{user_id}}",
        users_api.remove_member,
        "Remove a member",
        "admin",
    ),
    Route(
        "POST",
        f"{A}/config/declarative-iam-validate",
        declarative_api.validate,
        "Dry run: what reconciling access.iam_users / iam_groups would change",
        "admin",
        ("iam_users", "iam_groups"),
    ),
    Route(
        "GET",
        f"{A}/config/declarative-iam-export",
        declarative_api.export,
        "The IAM database as an access: YAML document (secrets redacted)",
        "admin",
    ),
)
_COMPILED = [(r, r.pattern) for r in ROUTES]
REQUIRED: dict[tuple[str, str], list[str]] = {
    ("POST", f"{A}/login"): ["password"],
    ("POST", f"{A}/login-as"): ["access_key_id", "secret_access_key"],
    ("PUT", f"{A}/password"): ["current_password", "new_password"],
    ("POST", f"{A}/users"): ["name"],
    ("POST", f"{A}/groups"): ["name"],
    ("POST", f"{A}/groups/{{id}}/members"): ["user_id"],
}
_STRING: dict[str, Any] = {"type": "string"}
PERMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["actions", "resources"],
    "properties": {
        "effect": {"type": "string", "enum": ["Allow", "Deny"]},
        "actions": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "enum": ["read", "write", "delete", "list", "admin", "*"]},
        },
        "resources": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "conditions": {"type": "object"},
    },
}
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "enabled": {"type": "boolean"},
    "permissions": {"type": "array", "maxItems": 100, "items": PERMISSION_SCHEMA},
    "member_ids": {"type": "array", "items": {"type": "integer"}},
    "user_id": {"type": "integer"},
    "iam_users": {"type": "array", "items": {"type": "object"}},
    "iam_groups": {"type": "array", "items": {"type": "object"}},
}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "parameters": params,
            "responses": {"default": {"description": "JSON; errors are {error, message}"}},
        }
        if route.auth != "public":
            operation["security"] = [{"session": []}]
        if route.body:
            schema: dict[str, Any] = {
                "type": "object",
                "properties": {f: FIELD_SCHEMAS.get(f, _STRING) for f in route.body},
            }
            required = REQUIRED.get((route.method, route.path))
            if required:
                schema["required"] = required
            operation["requestBody"] = {
                "required": not route.path.endswith("rotate-keys"),
                "content": {"application/json": {"schema": schema}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "DeltaGlider Proxy admin API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "dgp_session"}}
        },
    }


class AdminApi:
    def __init__(self, state: AdminState) -> None:
        self.state = state

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        path = scope["path"]
        method = scope["method"].upper()
        if path == "/_/api/openapi.json" and method == "GET":
            return json_response(200, openapi_document())
        headers = collect_headers(scope.get("headers", []))
        client = scope.get("client")
        peer = str(client[0]) if client else None
        req = ApiRequest(
            method=method,
            path=path,
            query=parse_query(scope.get("query_string", b"").decode("latin-1")),
            headers=headers,
            client_ip=self.state.services.client_ips.resolve(peer, headers),
            peer=peer,
            receive=receive,
        )
        allowed: list[str] = []
        for route, pattern in _COMPILED:
            match = pattern.match(path)
            if match is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            req.params = match.groupdict()
            try:
                # The table's word is enforced here, whatever the handler does itself ([D]: every
                # admin route needs an admin principal), so a new route cannot forget its guard.
                access = self.state.services.access
                if route.auth == "admin":
                    req.session = require_admin(req, self.state.sessions, access)
                elif route.auth == "session":
                    req.session = require_session(req, self.state.sessions, access)
                return await route.handler(self.state, req)
            except ApiError as exc:
                return exc.response()
            except Exception:
                log.exception("admin API %s %s failed", method, path)
                return ApiError(
                    500, "internal_error", "Internal server error. See server logs for details."
                ).response()
        if allowed:
            return ApiError(405, "method_not_allowed", f"use {', '.join(sorted(set(allowed)))}").response()
        return ApiError(404, "not_found", f"no such endpoint: {path}").response()
