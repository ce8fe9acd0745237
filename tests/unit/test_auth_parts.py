"""Limiter, client-IP resolver, session store and password hashes as pure code (fake clocks)."""

from __future__ import annotations

import base64

import bcrypt
import pytest

from deltaglider_proxy.auth.clientip import ClientIpResolver, parse_cidrs
from deltaglider_proxy.auth.passwords import (
    CorruptHash,
    decode_configured_hash,
    hash_password,
    policy_error,
    verify_password,
)
from deltaglider_proxy.auth.ratelimit import RateLimiter
from deltaglider_proxy.auth.sessions import SessionStore, cookie_tokens, set_cookie


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_window_and_release() -> None:
    clock = Clock()
    limiter = RateLimiter(max_attempts=3, window_seconds=60, lockout_seconds=10, clock=clock)
    assert not limiter.record_failure("s3", "1.2.3.4")
    assert not limiter.record_failure("s3", "1.2.3.4")
    assert limiter.record_failure("s3", "1.2.3.4")
    assert limiter.is_limited("s3", "1.2.3.4")
    assert not limiter.is_limited("admin_login", "1.2.3.4")  # surfaces are separate [D]
    assert not limiter.is_limited("s3", "1.2.3.5")
    clock.now += 10
    assert not limiter.is_limited("s3", "1.2.3.4")
    assert not limiter.record_failure("s3", "1.2.3.4")  # an expired lockout starts counting afresh


def test_fixed_window_restarts_and_success_resets() -> None:
    clock = Clock()
    limiter = RateLimiter(max_attempts=3, window_seconds=60, lockout_seconds=10, clock=clock)
    limiter.record_failure("s3", "ip")
    limiter.record_failure("s3", "ip")
    clock.now += 60
    assert not limiter.record_failure("s3", "ip")  # new window: count is 1 again
    limiter.record_failure("s3", "ip")
    limiter.record_success("s3", "ip")
    assert not limiter.record_failure("s3", "ip")


@pytest.mark.parametrize(
    ("count", "delay"), [(10, 0.0), (11, 0.2), (12, 0.4), (15, 3.2), (16, 5.0), (40, 5.0)]
)
def test_progressive_delay_curve(count: int, delay: float) -> None:
    limiter = RateLimiter(max_attempts=1000)
    for _ in range(count):
        limiter.record_failure("s3", "ip")
    assert limiter.delay_seconds("s3", "ip") == pytest.approx(delay)


def test_sweep_drops_only_stale_entries() -> None:
    clock = Clock()
    limiter = RateLimiter(max_attempts=2, window_seconds=5, lockout_seconds=100, clock=clock)
    limiter.record_failure("s3", "stale")
    limiter.record_failure("s3", "locked")
    limiter.record_failure("s3", "locked")
    clock.now += 6
    assert limiter.sweep() == 1
    assert limiter.is_limited("s3", "locked")


def test_client_ip_resolution() -> None:
    headers = {"x-forwarded-for": "203.0.113.5, 10.0.0.2", "x-real-ip": "192.0.2.1"}
    assert ClientIpResolver().resolve("127.0.0.1", headers) == "127.0.0.1"
    assert ClientIpResolver(True).resolve("127.0.0.1", headers) == "203.0.113.5"
    assert ClientIpResolver(True).resolve("::ffff:10.1.1.1", {}) == "10.1.1.1"
    trusted = ClientIpResolver(True, parse_cidrs("127.0.0.1, 10.0.0.0/8"))
    assert trusted.resolve("127.0.0.1", headers) == "203.0.113.5"  # right to left past the proxies
    assert trusted.resolve("198.51.100.1", headers) == "198.51.100.1"  # untrusted peer: headers ignored
    assert trusted.resolve("127.0.0.1", {"x-real-ip": "192.0.2.1"}) == "192.0.2.1"
    with pytest.raises(ValueError, match="not-a-cidr"):
        parse_cidrs("10.0.0.0/8,not-a-cidr")


def test_sessions_expire_idle_and_absolute_and_bind_ip() -> None:
    clock = Clock()
    store = SessionStore(ttl_seconds=100, idle_seconds=30, clock=clock)
    token, _ = store.create("bootstrap", "bootstrap", bound_ip="10.0.0.1")
    assert len(token) == 64
    assert store.get(token, "10.0.0.1") is not None
    assert store.get(token, "10.0.0.2") is None
    clock.now += 29
    assert store.get(token, "10.0.0.1") is not None  # activity renews the idle timer
    clock.now += 31
    assert store.get(token, "10.0.0.1") is None
    token, _ = store.create("bootstrap", "bootstrap", bound_ip=None)
    for _ in range(5):
        clock.now += 25
        store.get(token, "x")
    assert store.get(token, "x") is None  # absolute lifetime wins over activity


def test_session_capacity_evicts_oldest() -> None:
    store = SessionStore(100, 100)
    tokens = [store.create("bootstrap", "b", bound_ip=None)[0] for _ in range(11)]
    assert store.get(tokens[0], "x") is None
    assert store.get(tokens[-1], "x") is not None


def test_cookie_parsing_and_flags() -> None:
    assert cookie_tokens("a=1; dgp_session=abc ; dgp_session=def") == ["abc", "def"]
    assert cookie_tokens("dgp_session=") == []
    assert set_cookie("t", 60, secure=True).endswith("; Secure")
    assert "SameSite=Strict" in set_cookie("t", 60, secure=False)


def test_argon2_and_bcrypt_hashes_verify() -> None:
    argon = hash_password("a-good-password")
    assert argon.startswith("$argon2id$") and "a-good-password" not in argon
    assert verify_password(argon, "a-good-password") and not verify_password(argon, "wrong")
    upstream = bcrypt.hashpw(b"upstream-pass", bcrypt.gensalt(4)).decode()
    assert verify_password(upstream, "upstream-pass") and not verify_password(upstream, "nope")
    encoded = base64.b64encode(upstream.encode()).decode()
    assert decode_configured_hash(f"  {encoded}\n") == upstream
    with pytest.raises(CorruptHash):
        verify_password("plaintext", "plaintext")


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "Password must be at least 12 characters"),
        ("x" * 129, "Password too long (max 128 characters)"),
        ("PASSWORD1234", "Password is too common"),
        ("a-fine-passphrase", None),
    ],
)
def test_password_policy(password: str, message: str | None) -> None:
    assert policy_error(password) == message
