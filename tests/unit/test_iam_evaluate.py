"""The IAM evaluator as pure code: verbs, patterns, conditions, Deny-beats-Allow, list scope."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deltaglider_proxy.iam.actions import verb_for
from deltaglider_proxy.iam.conditions import conditions_hold
from deltaglider_proxy.iam.evaluate import (
    Decision,
    ListScope,
    Principal,
    can_see_bucket,
    evaluate,
    list_scope,
    may_see_key,
    may_see_prefix,
    pattern_matches,
)
from deltaglider_proxy.iam.model import InvalidPolicy, parse_permission, parse_permissions


def principal(*rules: dict[str, Any]) -> Principal:
    return Principal("alice", "AKALICE", parse_permissions(list(rules)))


def allow(actions: list[str], resources: list[str], **extra: Any) -> dict[str, Any]:
    return {"effect": "Allow", "actions": actions, "resources": resources, **extra}


def deny(actions: list[str], resources: list[str], **extra: Any) -> dict[str, Any]:
    return {"effect": "Deny", "actions": actions, "resources": resources, **extra}


@pytest.mark.parametrize(
    ("method", "key", "query", "verb"),
    [
        ("GET", None, [], "list"),
        ("HEAD", None, [], "list"),
        ("GET", "k", [], "read"),
        ("GET", "k", ["uploadId"], "read"),
        ("PUT", None, [], "admin"),
        ("PUT", "k", [], "write"),
        ("DELETE", None, [], "admin"),
        ("DELETE", "k", [], "delete"),
        ("DELETE", "k", ["uploadId"], "delete"),
        ("POST", None, ["delete"], "delete"),
        ("POST", "k", ["uploads"], "write"),
        ("PATCH", "k", [], "admin"),
    ],
)
def test_action_mapping(method: str, key: str | None, query: list[str], verb: str) -> None:
    assert verb_for(method, "b", key, query) == verb


def test_deny_beats_allow_whatever_the_order() -> None:
    for rules in (
        [allow(["*"], ["*"]), deny(["delete"], ["b/*"])],
        [deny(["delete"], ["b/*"]), allow(["*"], ["*"])],
    ):
        p = principal(*rules)
        assert evaluate(p, "delete", "b", "k") is Decision.DENY
        assert evaluate(p, "read", "b", "k") is Decision.ALLOW


def test_implicit_deny_without_applicable_rule() -> None:
    p = principal(allow(["read"], ["b/*"]))
    assert evaluate(p, "write", "b", "k") is Decision.IMPLICIT
    assert evaluate(p, "read", "other", "k") is Decision.IMPLICIT


def test_prefix_pattern_spans_slashes_and_respects_boundary() -> None:
    p = principal(allow(["read"], ["b/builds/*"]))
    assert evaluate(p, "read", "b", "builds/a/b/c.zip") is Decision.ALLOW
    assert evaluate(p, "read", "b", "buildscripts/x") is Decision.IMPLICIT


def test_bucket_level_fallback_makes_bucket_star_cover_bucket_ops() -> None:
    p = principal(allow(["list", "admin"], ["b/*"]))
    assert evaluate(p, "list", "b", None) is Decision.ALLOW
    assert evaluate(p, "admin", "b", None) is Decision.ALLOW
    exact_deny = principal(allow(["*"], ["b/*"]), deny(["admin"], ["b"]))
    assert evaluate(exact_deny, "admin", "b", None) is Decision.DENY


def test_source_ip_condition() -> None:
    p = principal(
        allow(["read"], ["*"], conditions={"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "192.0.2.7"]}})
    )
    assert evaluate(p, "read", "b", "k", {"aws:SourceIp": "10.1.2.3"}) is Decision.ALLOW
    assert evaluate(p, "read", "b", "k", {"aws:SourceIp": "192.0.2.7"}) is Decision.ALLOW
    assert evaluate(p, "read", "b", "k", {"aws:SourceIp": "192.0.2.8"}) is Decision.IMPLICIT
    assert evaluate(p, "read", "b", "k", {}) is Decision.IMPLICIT  # absent key: false
    mapped = {"aws:SourceIp": "::ffff:10.9.9.9"}
    assert evaluate(p, "read", "b", "k", mapped) is Decision.ALLOW


def test_missing_key_semantics() -> None:
    assert not conditions_hold({"StringNotLike": {"s3:prefix": "x*"}}, {})
    assert conditions_hold({"StringNotLikeIfExists": {"s3:prefix": "x*"}}, {})
    assert conditions_hold({"Null": {"s3:prefix": "true"}}, {})
    assert not conditions_hold({"Null": {"s3:prefix": "true"}}, {"s3:prefix": "a"})
    assert conditions_hold({"Null": {"s3:prefix": "false"}}, {"s3:prefix": "a"})


def test_operators() -> None:
    ctx = {"s3:prefix": "Docs/a", "s3:max-keys": "50", "aws:SourceIp": "127.0.0.1"}
    assert conditions_hold({"StringEquals": {"s3:prefix": "Docs/a"}}, ctx)
    assert conditions_hold({"StringEqualsIgnoreCase": {"s3:prefix": "docs/A"}}, ctx)
    assert not conditions_hold({"StringNotEquals": {"s3:prefix": "Docs/a"}}, ctx)
    assert conditions_hold({"StringLike": {"s3:prefix": "Doc?/*"}}, ctx)
    assert conditions_hold({"NumericLessThanEquals": {"s3:max-keys": "50"}}, ctx)
    assert not conditions_hold({"NumericGreaterThan": {"s3:max-keys": 50}}, ctx)
    assert conditions_hold({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, ctx)
    assert conditions_hold({"ForAnyValue:StringLike": {"s3:prefix": ["x", "Docs/*"]}}, ctx)
    # AND across entries
    assert not conditions_hold(
        {"StringLike": {"s3:prefix": "Docs/*"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, ctx
    )


def test_dotfile_listing_deny_via_prefix_condition() -> None:
    p = principal(allow(["*"], ["*"]), deny(["list"], ["b"], conditions={"StringLike": {"s3:prefix": ".*"}}))
    assert list_scope(p, "b", ".git/", {"s3:prefix": ".git/"}) is None
    assert list_scope(p, "b", "src/", {"s3:prefix": "src/"}) is not None


def test_list_scope_filtered_and_unrestricted() -> None:
    scoped = principal(allow(["read", "list"], ["b/team/*"]))
    assert list_scope(scoped, "b", "", {}) is ListScope.FILTERED
    assert list_scope(scoped, "b", "team/", {"s3:prefix": "team/"}) is ListScope.UNRESTRICTED
    assert list_scope(scoped, "other", "", {}) is None
    assert may_see_key(scoped, "b", "team/x", {})
    assert not may_see_key(scoped, "b", "private/x", {})
    assert may_see_prefix(scoped, "b", "team/", {})
    assert not may_see_prefix(scoped, "b", "private/", {})
    deep = principal(allow(["read"], ["b/a/b/c*"]))
    assert may_see_prefix(deep, "b", "a/", {})  # leads towards the granted prefix
    whole = principal(allow(["*"], ["*"]))
    assert list_scope(whole, "b", "", {}) is ListScope.UNRESTRICTED
    hidden = principal(allow(["*"], ["*"]), deny(["read"], ["b/secret/*"]))
    assert list_scope(hidden, "b", "", {}) is ListScope.FILTERED
    assert may_see_key(hidden, "b", "public/x", {})
    both = principal(allow(["*"], ["*"]), deny(["read", "list"], ["b/secret/*"]))
    assert not may_see_key(both, "b", "secret/x", {})
    assert not may_see_prefix(both, "b", "secret/", {})
    assert may_see_prefix(both, "b", "public/", {})


def test_can_see_bucket_and_is_admin() -> None:
    p = principal(allow(["read"], ["b/docs/*"]), deny(["*"], ["*"]))
    assert can_see_bucket(p, "b") and not can_see_bucket(p, "bb")
    assert not p.is_admin
    assert principal(allow(["admin"], ["*"])).is_admin
    assert not principal(allow(["*"], ["b"])).is_admin
    assert not principal(allow(["*"], ["*"]), deny(["admin"], ["*"])).is_admin


@pytest.mark.parametrize(
    "doc",
    [
        {"actions": [], "resources": ["*"]},
        {"actions": ["fly"], "resources": ["*"]},
        {"actions": ["read"], "resources": ["b/*/x"]},
        {"actions": ["read"], "resources": ["b x"]},
        {"actions": ["read"], "resources": ["*"], "effect": "Maybe"},
        {"actions": ["read"], "resources": ["*"], "conditions": {"StringSorta": {"s3:prefix": "x"}}},
        {"actions": ["read"], "resources": ["*"], "conditions": {"StringLike": {"aws:Foo": "x"}}},
        {
            "actions": ["read"],
            "resources": ["*"],
            "conditions": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}},
        },
        {"actions": ["read"], "resources": ["*"], "extra": 1},
    ],
)
def test_invalid_permissions_rejected_with_reason(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidPolicy) as info:
        parse_permission(doc)
    assert str(info.value)


def test_effect_is_case_insensitive_and_normalised() -> None:
    assert parse_permission({"effect": "deny", "actions": ["read"], "resources": ["*"]}).effect == "Deny"


keys = st.text(alphabet="ab/.-_", min_size=0, max_size=12)


@given(stem=keys, rest=keys)
def test_trailing_star_is_exactly_a_prefix_match(stem: str, rest: str) -> None:
    assert pattern_matches(f"b/{stem}*", f"b/{stem}{rest}")
    assert pattern_matches(f"b/{stem}", f"b/{stem}{rest}") == (rest == "")


@given(key=keys, deny_first=st.booleans())
def test_deny_everywhere_is_never_overridden(key: str, deny_first: bool) -> None:
    rules = [allow(["*"], ["*"]), deny(["*"], ["*"])]
    p = principal(*(reversed(rules) if deny_first else rules))
    for verb in ("read", "write", "delete", "list", "admin"):
        assert evaluate(p, verb, "b", key or None) is Decision.DENY
