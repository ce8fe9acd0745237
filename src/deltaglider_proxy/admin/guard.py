"""Who is calling the admin API and may they (control-plane.md §2.3 [D]).

Every protected route needs an **admin principal**, re-evaluated on each request: bootstrap
sessions are admin; IAM sessions are admin while their user exists, is enabled and holds
admin over its effective rules. Cookie-authenticated mutations must also prove they are not a
cross-site form post (CSRF): a JSON content type or ``X-Requested-With``, and a matching
``Origin`` when the browser sends one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest, unauthorized
from deltaglider_proxy.auth.access import AccessControl
from deltaglider_proxy.auth.sessions import Session, SessionStore, cookie_tokens

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def session_of(req: ApiRequest, sessions: SessionStore, access: AccessControl) -> Session | None:
    for token in cookie_tokens(req.headers.get("cookie", "")):
        session = sessions.get(token, req.client_ip)
        if session is None:
            continue
        if session.method == "iam":
            principal = access.index.by_user_id.get(session.user_id or -1)
            if principal is None or not principal.enabled:
                sessions.delete(token)  # the user was deleted or disabled: the session dies with it
                continue
        return session
    return None


def is_admin(session: Session, access: AccessControl) -> bool:
    if session.method == "bootstrap":
        return True
    principal = access.index.by_user_id.get(session.user_id or -1)
    return principal is not None and principal.enabled and principal.is_admin


def check_csrf(req: ApiRequest) -> None:
    if req.method not in MUTATING:
        return
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not req.headers.get("x-requested-with"):
        raise ApiError(
            403,
            "csrf_check_failed",
            "state-changing admin requests need Content-Type: application/json or an X-Requested-With header",
        )
    origin = req.headers.get("origin")
    if origin and origin != "null":
        host = req.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise ApiError(403, "csrf_check_failed", f"cross-origin request from {origin} refused")
    elif origin == "null":
        raise ApiError(403, "csrf_check_failed", "requests from an opaque origin are refused")


def require_session(req: ApiRequest, sessions: SessionStore, access: AccessControl) -> Session:
    session = session_of(req, sessions, access)
    if session is None:
        raise unauthorized()
    check_csrf(req)
    return session


def checked_session(req: ApiRequest) -> Session:
    """The session the route table checked for this request (handlers of session and admin
    routes; the table, not the handler, decides who may call)."""
    if req.session is None:
        raise unauthorized()
    return req.session


def require_admin(req: ApiRequest, sessions: SessionStore, access: AccessControl) -> Session:
    session = require_session(req, sessions, access)
    if not is_admin(session, access):
        raise ApiError(403, "admin_session_required", "this endpoint needs an admin session")
    return session
