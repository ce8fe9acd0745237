"""Login, logout, whoami, password (control-plane.md §6.1)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from deltaglider_proxy import __version__
from deltaglider_proxy.admin.guard import checked_session, is_admin, session_of
from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest, field_of, json_response
from deltaglider_proxy.admin.state import AdminState
from deltaglider_proxy.auth.passwords import CorruptHash, policy_error
from deltaglider_proxy.auth.sessions import COOKIE, Session, cookie_tokens, set_cookie
from deltaglider_proxy.s3api.http import Response

SURFACE = "admin_login"


async def _gate(state: AdminState, req: ApiRequest) -> Response | None:
    """429 while the caller is locked out; otherwise the progressive delay, then go on."""
    limiter = state.services.limiter
    if limiter.is_limited(SURFACE, req.client_ip):
        return json_response(429, {"ok": False, "error": "too_many_attempts", "message": "try again later"})
    delay = limiter.delay_seconds(SURFACE, req.client_ip)
    if delay:
        await asyncio.sleep(delay)
    return None


def _login_response(state: AdminState, req: ApiRequest, session: Session, token: str) -> Response:
    max_age = int(state.sessions.ttl_seconds)
    cookie = set_cookie(token, max_age, secure=state.secure_cookie(req))
    return json_response(200, {"ok": True}, [("set-cookie", cookie)])


def _forget_presented(state: AdminState, req: ApiRequest) -> None:
    for token in cookie_tokens(req.headers.get("cookie", "")):
        state.sessions.delete(token)


def _bound_ip(state: AdminState, req: ApiRequest) -> str | None:
    return req.client_ip if state.services.runtime.trust_proxy_headers else None


async def login(state: AdminState, req: ApiRequest) -> Response:
    if (locked := await _gate(state, req)) is not None:
        return locked
    doc = await req.json()
    password = field_of(doc, "password", str, "")
    try:
        ok = await asyncio.to_thread(state.bootstrap.verify, password)
    except CorruptHash as exc:
        return json_response(500, {"ok": False, "error": "corrupt_hash", "message": str(exc)})
    if not ok:
        state.services.limiter.record_failure(SURFACE, req.client_ip, "wrong_password")
        state.services.metrics.admin_logins.labels(method="bootstrap", result="failure").inc()
        state.audit("login_failed", None, req, "bootstrap")
        return json_response(401, {"ok": False, "error": "invalid_password", "message": "wrong password"})
    state.services.limiter.record_success(SURFACE, req.client_ip)
    # Any session the browser carried is replaced by a fresh token: no session fixation.
    _forget_presented(state, req)
    pair = state.services.access.credentials.pair
    creds = {"access_key_id": pair.access_key_id, "secret_access_key": pair.secret_access_key} if pair else {}
    token, session = state.sessions.create(
        "bootstrap", "bootstrap", bound_ip=_bound_ip(state, req), s3_credentials=creds
    )
    state.services.metrics.admin_logins.labels(method="bootstrap", result="success").inc()
    state.audit("login_success", session, req, "bootstrap")
    return _login_response(state, req, session, token)


def _digest_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())


async def login_as(state: AdminState, req: ApiRequest) -> Response:
    if (locked := await _gate(state, req)) is not None:
        return locked
    doc = await req.json()
    akid = field_of(doc, "access_key_id", str, "")
    secret = field_of(doc, "secret_access_key", str, "")
    access = state.services.access
    if access.mode != "iam":
        raise ApiError(403, "not_iam_mode", "login-as works only once IAM users exist")
    index = access.index
    principal = index.by_access_key.get(akid)
    stored = index.secrets.get(akid, "")
    # Compare even for unknown keys, so timing does not reveal which keys exist.
    secret_ok = _digest_equal(secret, stored) and principal is not None
    if not secret_ok or principal is None:
        state.services.limiter.record_failure(SURFACE, req.client_ip, "login_as")
        state.services.metrics.admin_logins.labels(method="login_as", result="failure").inc()
        state.audit("login_failed", None, req, akid)
        raise ApiError(403, "invalid_credentials", "unknown access key or wrong secret")
    if not principal.enabled or not principal.is_admin:
        raise ApiError(403, "admin_session_required", "this user is disabled or not an admin")
    state.services.limiter.record_success(SURFACE, req.client_ip)
    _forget_presented(state, req)
    token, session = state.sessions.create(
        "iam",
        principal.name,
        bound_ip=_bound_ip(state, req),
        user_id=principal.user_id,
        s3_credentials={"access_key_id": akid, "secret_access_key": secret},
    )
    state.services.metrics.admin_logins.labels(method="login_as", result="success").inc()
    state.audit("login_success", session, req, f"login-as:{principal.name}")
    return _login_response(state, req, session, token)


async def logout(state: AdminState, req: ApiRequest) -> Response:
    session = checked_session(req)
    _forget_presented(state, req)
    state.audit("logout", session, req)
    clear = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0" + (
        "; Secure" if state.secure_cookie(req) else ""
    )
    return json_response(200, {"ok": True}, [("set-cookie", clear)])


async def session_status(state: AdminState, req: ApiRequest) -> Response:
    valid = session_of(req, state.sessions, state.services.access) is not None
    return json_response(200, {"valid": valid})


async def whoami(state: AdminState, req: ApiRequest) -> Response:
    access = state.services.access
    doc: dict[str, object] = {"mode": access.mode, "version": __version__}
    session = session_of(req, state.sessions, access)
    if session is not None:
        if session.method == "bootstrap":
            doc["user"] = {"name": "admin", "access_key_id": "bootstrap", "is_admin": True}
        else:
            doc["user"] = {
                "name": session.principal,
                "access_key_id": session.s3_credentials.get("access_key_id", ""),
                "is_admin": is_admin(session, access),
            }
    return json_response(200, doc)


async def change_password(state: AdminState, req: ApiRequest) -> Response:
    session = checked_session(req)
    if (locked := await _gate(state, req)) is not None:
        return locked
    doc = await req.json()
    current = field_of(doc, "current_password", str, "")
    new = field_of(doc, "new_password", str, "")
    try:
        ok = await asyncio.to_thread(state.bootstrap.verify, current)
    except CorruptHash as exc:
        raise ApiError(500, "corrupt_hash", str(exc)) from None
    if not ok:
        state.services.limiter.record_failure(SURFACE, req.client_ip, "change_password")
        return json_response(
            403, {"ok": False, "error": "wrong_password", "message": "Current password is incorrect"}
        )
    problem = policy_error(new)
    if problem is not None:
        return json_response(400, {"ok": False, "error": "weak_password", "message": problem})
    try:
        warnings = await asyncio.to_thread(state.bootstrap.rotate, new)
    except OSError as exc:
        raise ApiError(
            500, "persist_failed", f"could not store the new hash ({exc}); password unchanged"
        ) from None
    state.services.limiter.record_success(SURFACE, req.client_ip)
    state.audit("change_password", session, req, "bootstrap")
    return json_response(200, {"ok": True, "warnings": warnings})


async def iam_version(state: AdminState, req: ApiRequest) -> Response:
    return json_response(200, {"version": state.iam.version if state.iam is not None else 0})


CANNED_POLICIES = [
    {"name": "Full Access", "description": "Everything on every bucket",
     "permissions": [{"effect": "Allow", "actions": ["*"], "resources": ["*"]}]},
    {"name": "Read Only", "description": "Read and list every bucket",
     "permissions": [{"effect": "Allow", "actions": ["read", "list"], "resources": ["*"]}]},
    {"name": "Read/Write", "description": "Read, write and list every bucket",
     "permissions": [{"effect": "Allow", "actions": ["read", "write", "list"], "resources": ["*"]}]},
    {"name": "Read/Write (No Delete)", "description": "Everything except deleting objects",
     "permissions": [{"effect": "Allow", "actions": ["*"], "resources": ["*"]},
                     {"effect": "Deny", "actions": ["delete"], "resources": ["*"]}]},
]  # fmt: skip


async def policies(state: AdminState, req: ApiRequest) -> Response:
    return json_response(200, CANNED_POLICIES)


async def get_s3_credentials(state: AdminState, req: ApiRequest) -> Response:
    session = checked_session(req)
    if not session.s3_credentials:
        raise ApiError(404, "no_credentials", "this session holds no S3 credentials")
    return json_response(200, {"endpoint": "", "region": "us-east-1", "bucket": "", **session.s3_credentials})


async def put_s3_credentials(state: AdminState, req: ApiRequest) -> Response:
    session = checked_session(req)
    doc = await req.json()
    session.s3_credentials = {
        k: field_of(doc, k, str, "")
        for k in ("endpoint", "region", "bucket", "access_key_id", "secret_access_key")
    }
    return json_response(200, {"ok": True})


async def delete_s3_credentials(state: AdminState, req: ApiRequest) -> Response:
    session = checked_session(req)
    session.s3_credentials = {}
    return json_response(200, {"ok": True})
