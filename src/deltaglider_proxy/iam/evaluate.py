"""Policy evaluation (control-plane.md §3.4–§3.6): Deny beats Allow beats implicit deny.

A principal's rules are its direct rules followed by those of every group it belongs to. Each
rule is an independent statement; a statement applies when it covers the verb, one of its
resource patterns matches and all of its conditions hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from deltaglider_proxy.iam.conditions import Context, conditions_hold
from deltaglider_proxy.iam.model import Permission


class Decision(Enum):
    ALLOW = "allow"
    DENY = "deny"  # an explicit Deny applied
    IMPLICIT = "implicit"  # nothing applied


class ListScope(Enum):
    UNRESTRICTED = "unrestricted"
    FILTERED = "filtered"


@dataclass(frozen=True)
class Principal:
    """Who a verified request speaks for, with its effective rules precompiled."""

    name: str
    access_key_id: str
    rules: tuple[Permission, ...]
    user_id: int | None = None
    enabled: bool = True

    @property
    def is_admin(self) -> bool:
        """Allow of ``*``/``admin`` on ``*`` and no Deny of ``*``/``admin`` on ``*`` (§3.6)."""
        granted = any(
            r.effect == "Allow" and {"*", "admin"} & set(r.actions) and "*" in r.resources for r in self.rules
        )
        revoked = any(
            r.effect == "Deny" and {"*", "admin"} & set(r.actions) and "*" in r.resources for r in self.rules
        )
        return granted and not revoked


def pattern_matches(pattern: str, resource: str) -> bool:
    """``*`` matches anything; a trailing ``*`` is a prefix match spanning ``/``; else exact."""
    if pattern.endswith("*"):
        return resource.startswith(pattern[:-1])
    return pattern == resource


def _covers(rule: Permission, verb: str) -> bool:
    return verb in rule.actions or "*" in rule.actions


def _applies(rule: Permission, verb: str, resource: str, context: Context) -> bool:
    return (
        _covers(rule, verb)
        and any(pattern_matches(p, resource) for p in rule.resources)
        and conditions_hold(rule.conditions, context)
    )


def _decide(rules: Iterable[Permission], verb: str, resource: str, context: Context) -> Decision:
    allowed = False
    for rule in rules:
        if _applies(rule, verb, resource, context):
            if rule.effect == "Deny":
                return Decision.DENY
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT


def evaluate(
    principal: Principal, verb: str, bucket: str, key: str | None, context: Context | None = None
) -> Decision:
    """The decision for ``verb`` on ``bucket`` (key-less) or ``bucket/key``.

    Key-less requests with no applicable statement are retried against ``bucket/`` so that
    ``bucket/*`` also grants bucket-level operations; an explicit Deny is final.
    """
    ctx = context or {}
    if key is None:
        decision = _decide(principal.rules, verb, bucket, ctx)
        if decision is Decision.IMPLICIT:
            decision = _decide(principal.rules, verb, bucket + "/", ctx)
        return decision
    return _decide(principal.rules, verb, f"{bucket}/{key}", ctx)


def allowed(
    principal: Principal, verb: str, bucket: str, key: str | None, context: Context | None = None
) -> bool:
    return evaluate(principal, verb, bucket, key, context) is Decision.ALLOW


def can_see_bucket(principal: Principal, bucket: str) -> bool:
    """Some Allow rule names ``*``, the bucket, or something inside it (Deny rules are ignored)."""
    return any(
        rule.effect == "Allow"
        and any(p == "*" or p == bucket or p.startswith(bucket + "/") for p in rule.resources)
        for rule in principal.rules
    )


def _touches_bucket(pattern: str, bucket: str) -> bool:
    return (
        pattern == "*"
        or pattern == bucket
        or pattern.startswith(bucket + "/")
        or (pattern.endswith("*") and (bucket + "/").startswith(pattern[:-1]))
    )


def list_scope(principal: Principal, bucket: str, prefix: str, context: Context) -> ListScope | None:
    """How a bucket-level LIST is admitted, or ``None`` for 403 (§3.6).

    Unrestricted needs an applicable Allow whose pattern covers everything under the requested
    prefix, and no Deny on read/list that could hide entries in this bucket — otherwise the
    listing is filtered key by key, which is always safe.
    """
    decision = evaluate(principal, "list", bucket, None, context)
    if decision is Decision.DENY:
        return None
    wanted = f"{bucket}/{prefix}"
    covering = any(
        rule.effect == "Allow"
        and _covers(rule, "list")
        and conditions_hold(rule.conditions, context)
        and any(
            p == "*" or p == bucket or p == bucket + "/*" or (p.endswith("*") and wanted.startswith(p[:-1]))
            for p in rule.resources
        )
        for rule in principal.rules
    )
    if covering:
        hiding = any(
            rule.effect == "Deny"
            and (_covers(rule, "read") or _covers(rule, "list"))
            and any(_touches_bucket(p, bucket) for p in rule.resources)
            for rule in principal.rules
        )
        return ListScope.FILTERED if hiding else ListScope.UNRESTRICTED
    if decision is Decision.ALLOW or can_see_bucket(principal, bucket):
        return ListScope.FILTERED
    return None


def may_see_key(principal: Principal, bucket: str, key: str, context: Context) -> bool:
    """A filtered listing shows a key the caller may read or list."""
    return allowed(principal, "read", bucket, key, context) or allowed(
        principal, "list", bucket, key, context
    )


def may_see_prefix(principal: Principal, bucket: str, prefix: str, context: Context) -> bool:
    """A CommonPrefix is shown when some Allow could reach a key under it and no Deny hides it all."""
    resource = f"{bucket}/{prefix}"
    for rule in principal.rules:
        if (
            rule.effect == "Deny"
            and (_covers(rule, "read") and _covers(rule, "list"))
            and conditions_hold(rule.conditions, context)
            and any(p.endswith("*") and resource.startswith(p[:-1]) for p in rule.resources)
        ):
            return False
    for rule in principal.rules:
        if rule.effect != "Allow" or not (_covers(rule, "read") or _covers(rule, "list")):
            continue
        if not conditions_hold(rule.conditions, context):
            continue
        for p in rule.resources:
            stem = p[:-1] if p.endswith("*") else p
            if p == "*" or stem.startswith(resource) or (p.endswith("*") and resource.startswith(stem)):
                return True
    return False


BOOTSTRAP = Principal(
    name="$bootstrap",
    access_key_id="",
    rules=(Permission(effect="Allow", actions=("*",), resources=("*",)),),
)
