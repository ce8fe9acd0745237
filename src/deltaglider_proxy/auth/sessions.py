"""Admin sessions (control-plane.md §2.3): opaque CSPRNG tokens in a per-process store.

A session has an absolute lifetime (``DGP_SESSION_TTL_HOURS``) and an idle timeout
(``DGP_SESSION_IDLE_MINUTES``); it may be bound to the client IP it was created from. Tokens are
looked up by their SHA-256, so the dict never holds a usable token and a lookup's timing says
nothing about how much of a guessed token matched. A fresh token is minted on every login
(no fixation). At most :data:`MAX_SESSIONS` live at once; the oldest is evicted first.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)
MAX_SESSIONS = 10
COOKIE = "dgp_session"
Method = Literal["bootstrap", "iam"]


@dataclass
class Session:
    method: Method
    principal: str  # "bootstrap" or the IAM user name, for audit entries
    created: float
    last_seen: float
    bound_ip: str | None = None
    user_id: int | None = None
    s3_credentials: dict[str, str] = field(default_factory=dict, repr=False)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class SessionStore:
    def __init__(
        self,
        ttl_seconds: float,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def live(self) -> int:
        """Sessions not yet expired (the admin-sessions gauge)."""
        with self._lock:
            self._purge(self._clock())
            return len(self._sessions)

    def create(
        self,
        method: Method,
        principal: str,
        *,
        bound_ip: str | None,
        user_id: int | None = None,
        s3_credentials: dict[str, str] | None = None,
    ) -> tuple[str, Session]:
        token = secrets.token_hex(32)
        now = self._clock()
        session = Session(method, principal, now, now, bound_ip, user_id, dict(s3_credentials or {}))
        with self._lock:
            self._purge(now)
            while len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
                log.warning("admin session limit (%d) reached: evicting the oldest session", MAX_SESSIONS)
                del self._sessions[oldest]
            self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str | None, client_ip: str) -> Session | None:
        if not token:
            return None
        now = self._clock()
        with self._lock:
            key = _digest(token)
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.created >= self.ttl_seconds or now - session.last_seen >= self.idle_seconds:
                del self._sessions[key]
                return None
            if session.bound_ip is not None and session.bound_ip != client_ip:
                return None
            session.last_seen = now
            return session

    def delete(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_digest(token), None)

    def drop_user(self, user_id: int) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.user_id == user_id]:
                del self._sessions[key]

    def _purge(self, now: float) -> None:
        for key in [
            k
            for k, s in self._sessions.items()
            if now - s.created >= self.ttl_seconds or now - s.last_seen >= self.idle_seconds
        ]:
            del self._sessions[key]


def cookie_tokens(cookie_header: str) -> list[str]:
    """Every ``dgp_session`` value sent (a browser may hold several, e.g. per domain)."""
    tokens = []
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE and value:
            tokens.append(value)
    return tokens


def set_cookie(token: str, max_age: int, *, secure: bool) -> str:
    # SameSite=Strict: the browser never attaches the admin cookie to a cross-site request.
    return f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}" + (
        "; Secure" if secure else ""
    )
