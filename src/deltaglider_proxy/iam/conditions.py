"""Condition evaluation with AWS operator names (control-plane.md §3.5).

Missing-key semantics follow upstream exactly: an entry whose key is absent from the request
context is false, except for ``…IfExists`` operators (true) and ``Null``. Several values for one
key are OR-ed — for negated operators that means "differs from at least one value".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from deltaglider_proxy.iam.model import base_operator

Context = Mapping[str, str]


@lru_cache(maxsize=1024)
def _like(pattern: str) -> re.Pattern[str]:
    # AWS wildcards: '*' any run (including '/'), '?' one character; nothing else is special.
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"(?s:{body})\\Z")


def _ip_in(value: str, cidr: str) -> bool:
    try:
        address = ipaddress.ip_address(value)
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.version == network.version and address in network


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _date(text: str) -> datetime | None:
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text), UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _compare(kind: str, convert: Callable[[str], Any]) -> Callable[[str, str], bool]:
    def test(actual: str, expected: str) -> bool:
        a, e = convert(actual), convert(expected)
        if a is None or e is None:
            return False
        ops: dict[str, bool] = {
            "Equals": a == e,
            "NotEquals": a != e,
            "LessThan": a < e,
            "LessThanEquals": a <= e,
            "GreaterThan": a > e,
            "GreaterThanEquals": a >= e,
        }
        return ops[kind]

    return test


_TESTS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda a, e: a == e,
    "StringNotEquals": lambda a, e: a != e,
    "StringEqualsIgnoreCase": lambda a, e: a.lower() == e.lower(),
    "StringNotEqualsIgnoreCase": lambda a, e: a.lower() != e.lower(),
    "StringLike": lambda a, e: _like(e).match(a) is not None,
    "StringNotLike": lambda a, e: _like(e).match(a) is None,
    "IpAddress": _ip_in,
    "NotIpAddress": lambda a, e: not _ip_in(a, e),
    "Bool": lambda a, e: a.strip().lower() == str(e).strip().lower(),
}
for _kind in ("Equals", "NotEquals", "LessThan", "LessThanEquals", "GreaterThan", "GreaterThanEquals"):
    _TESTS["Numeric" + _kind] = _compare(_kind, _number)
    _TESTS["Date" + _kind] = _compare(_kind, _date)


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def entry_holds(operator: str, key: str, value: object, context: Context) -> bool:
    expected = [_as_text(v) for v in (value if isinstance(value, list) else [value])]
    base = base_operator(operator)
    actual = context.get(key)
    if base == "Null":
        # Null: true means "the key must be absent", false "must be present".
        return any((e.lower() == "true") == (actual is None) for e in expected)
    if actual is None:
        return operator.endswith("IfExists")
    test = _TESTS[base]
    # The context is single-valued, so ForAnyValue and ForAllValues reduce to the plain test.
    return any(test(actual, e) for e in expected)


def conditions_hold(conditions: Mapping[str, Mapping[str, object]] | None, context: Context) -> bool:
    """All operator/key entries must hold (AND)."""
    if not conditions:
        return True
    return all(
        entry_holds(operator, key, value, context)
        for operator, entries in conditions.items()
        for key, value in entries.items()
    )
