"""IAM entities as plain values (control-plane.md §3.1) and the validation of what callers send.

Validation happens on write, so the evaluator can trust what it is given: unknown verbs, bad
resource patterns, unknown condition operators/keys and bad CIDRs are rejected with a message
naming the offending value ([D] §3.5).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Effect = Literal["Allow", "Deny"]
VERBS = frozenset({"read", "write", "delete", "list", "admin", "*"})
MAX_RULES = 100
CONDITION_KEYS = frozenset({"aws:SourceIp", "s3:prefix", "s3:delimiter", "s3:max-keys"})
_BASE_OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
        "IpAddress",
        "NotIpAddress",
        "NumericEquals",
        "NumericNotEquals",
        "NumericLessThan",
        "NumericLessThanEquals",
        "NumericGreaterThan",
        "NumericGreaterThanEquals",
        "DateEquals",
        "DateNotEquals",
        "DateLessThan",
        "DateLessThanEquals",
        "DateGreaterThan",
        "DateGreaterThanEquals",
        "Bool",
        "Null",
    }
)


class InvalidPolicy(ValueError):
    """A permission a caller sent that cannot be stored; the message says which part and why."""


@dataclass(frozen=True)
class Permission:
    effect: Effect
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: dict[str, dict[str, Any]] | None = None
    id: int = 0

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "effect": self.effect,
            "actions": list(self.actions),
            "resources": list(self.resources),
        }
        if self.conditions is not None:
            doc["conditions"] = self.conditions
        return doc

    def identity(self) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
        """What makes two rules the same, ignoring row ids and order of list members."""
        return (
            self.effect,
            tuple(sorted(self.actions)),
            tuple(sorted(self.resources)),
            json.dumps(self.conditions, sort_keys=True),
        )


@dataclass(frozen=True)
class User:
    id: int
    name: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    enabled: bool = True
    created_at: str = ""
    auth_source: str = "local"
    permissions: tuple[Permission, ...] = ()
    group_ids: tuple[int, ...] = ()

    def as_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "access_key_id": self.access_key_id,
            "enabled": self.enabled,
            "created_at": self.created_at,
            "permissions": [p.as_json() for p in self.permissions],
            "group_ids": list(self.group_ids),
            "auth_source": self.auth_source,
        }
        if with_secret:
            doc["secret_access_key"] = self.secret_access_key
        return doc


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    description: str = ""
    permissions: tuple[Permission, ...] = ()
    member_ids: tuple[int, ...] = ()
    created_at: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "permissions": [p.as_json() for p in self.permissions],
            "member_ids": list(self.member_ids),
            "created_at": self.created_at,
        }


def validate_resource(pattern: object) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise InvalidPolicy("resource patterns must be non-empty strings")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        raise InvalidPolicy(f"resource {pattern!r} contains whitespace or control characters")
    if "*" in pattern[:-1]:
        raise InvalidPolicy(
            f"resource {pattern!r}: only trailing '*' is supported (e.g. 'bucket/prefix*' or '*')"
        )
    return pattern


def _validate_condition_value(operator: str, key: str, value: object) -> None:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int | float | bool) for v in values):
        raise InvalidPolicy(f"condition {operator}.{key}: values must be a string or a list of strings")
    if base_operator(operator) in ("IpAddress", "NotIpAddress"):
        for v in values:
            try:
                ipaddress.ip_network(str(v), strict=False)
            except ValueError:
                raise InvalidPolicy(
                    f"condition {operator}.{key}: {v!r} is not an IP address or CIDR"
                ) from None


def base_operator(operator: str) -> str:
    """``ForAnyValue:StringLikeIfExists`` → ``StringLike``."""
    name = operator.split(":", 1)[1] if operator.startswith(("ForAnyValue:", "ForAllValues:")) else operator
    return name.removesuffix("IfExists") if name != "IfExists" else name


def validate_conditions(conditions: object) -> dict[str, dict[str, Any]] | None:
    if conditions is None:
        return None
    if not isinstance(conditions, dict):
        raise InvalidPolicy('conditions must be an object like {"StringLike": {"s3:prefix": "docs/*"}}')
    for operator, entries in conditions.items():
        if base_operator(operator) not in _BASE_OPERATORS:
            raise InvalidPolicy(f"unknown condition operator {operator!r}")
        if not isinstance(entries, dict) or not entries:
            raise InvalidPolicy(f"condition {operator}: expected an object of key → value(s)")
        for key, value in entries.items():
            if key not in CONDITION_KEYS:
                known = ", ".join(sorted(CONDITION_KEYS))
                raise InvalidPolicy(f"unknown condition key {key!r} (known: {known})")
            _validate_condition_value(operator, key, value)
    return conditions


def parse_permission(doc: object) -> Permission:
    if not isinstance(doc, dict):
        raise InvalidPolicy("each permission must be an object with effect, actions and resources")
    unknown = set(doc) - {"id", "effect", "actions", "resources", "conditions"}
    if unknown:
        raise InvalidPolicy(f"unknown permission field(s): {', '.join(sorted(unknown))}")
    effect_text = str(doc.get("effect") or "Allow").strip().lower()
    if effect_text not in ("allow", "deny"):
        raise InvalidPolicy(f"effect must be Allow or Deny, not {doc.get('effect')!r}")
    actions = doc.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InvalidPolicy("actions must be a non-empty list")
    for action in actions:
        if action not in VERBS:
            raise InvalidPolicy(f"unknown action {action!r} (valid: {', '.join(sorted(VERBS))})")
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources:
        raise InvalidPolicy("resources must be a non-empty list")
    return Permission(
        effect="Allow" if effect_text == "allow" else "Deny",
        actions=tuple(str(a) for a in actions),
        resources=tuple(validate_resource(r) for r in resources),
        conditions=validate_conditions(doc.get("conditions")),
    )


def parse_permissions(docs: object) -> tuple[Permission, ...]:
    if docs is None:
        return ()
    if not isinstance(docs, list):
        raise InvalidPolicy("permissions must be a list")
    if len(docs) > MAX_RULES:
        raise InvalidPolicy(f"at most {MAX_RULES} permissions per user or group")
    return tuple(parse_permission(d) for d in docs)


def validate_user_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidPolicy("name must be a non-empty string")
    if name.startswith("$"):
        raise InvalidPolicy("user names starting with '$' are reserved ($bootstrap, $anonymous)")
    if len(name) > 128 or any(ord(c) < 0x20 for c in name):
        raise InvalidPolicy("name must be at most 128 printable characters")
    return name


def validate_access_key(value: object) -> str:
    if not isinstance(value, str) or not value or not value.isascii() or any(c.isspace() for c in value):
        raise InvalidPolicy("access_key_id must be non-empty ASCII without whitespace")
    if len(value) > 128 or "/" in value:
        raise InvalidPolicy("access_key_id must be at most 128 characters and contain no '/'")
    return value


def validate_secret(value: object) -> str:
    if not isinstance(value, str) or len(value) < 8 or not value.isascii() or len(value) > 256:
        raise InvalidPolicy("secret_access_key must be 8..256 ASCII characters")
    return value
