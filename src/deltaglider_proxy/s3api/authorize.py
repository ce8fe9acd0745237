"""IAM authorisation at the S3 edge (control-plane.md §3.3–§3.6).

The gateway calls :func:`authorize` once per request, after SigV4; operations that touch more
than the request's own resource (copy sources, DeleteObjects keys, filtered listings) ask
:func:`may` per item, with the same request context ([D] §3.5: re-checks keep ``aws:SourceIp``).
Calls without a principal (open mode, public-prefix reads) are not IAM-checked here.
"""

from __future__ import annotations

from deltaglider_proxy.iam.actions import verb_for
from deltaglider_proxy.iam.evaluate import (
    Decision,
    ListScope,
    allowed,
    can_see_bucket,
    evaluate,
    list_scope,
    may_see_key,
    may_see_prefix,
)
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api.context import Call

LIST_FILTERED_HEADER = ("x-amz-meta-dg-list-filtered", "true")


def request_context(call: Call) -> dict[str, str]:
    req = call.req
    context: dict[str, str] = {}
    if req.client_ip and req.client_ip not in ("-", "unknown"):
        context["aws:SourceIp"] = req.client_ip
    if req.bucket is not None and req.key is None and req.method in ("GET", "HEAD"):
        prefix = req.q("prefix")
        if prefix is not None:
            context["s3:prefix"] = prefix
        delimiter = req.q("delimiter")
        if delimiter is not None:
            context["s3:delimiter"] = delimiter
        max_keys = req.q("max-keys")
        if max_keys is not None and max_keys.isdigit():
            context["s3:max-keys"] = max_keys
    return context


def authorize(call: Call) -> None:
    """Raise AccessDenied unless the call's principal may make this request (and audit a denial)."""
    try:
        _authorize(call)
    except errors.S3Error as exc:
        req = call.req
        if errors.AccessDenied.matches(exc) and req.bucket is not None:
            _audit_denial(call, verb_for(req.method, req.bucket, req.key, req.query), req.bucket, req.key)
        raise


def _audit_denial(call: Call, verb: str, bucket: str, key: str | None) -> None:
    """control-plane.md §10.2 ``access_denied``: who, which verb, on what."""
    if call.principal is None:
        return
    req = call.req
    call.services.audit.record(
        "access_denied",
        user=call.principal.name,
        target=verb.capitalize(),
        ip=req.client_ip,
        ua=req.headers.get("user-agent", ""),
        bucket=bucket,
        path=key or "",
    )


def _authorize(call: Call) -> None:
    principal = call.principal
    req = call.req
    if principal is None or req.bucket is None:
        return  # ListBuckets filters in its handler; HEAD / is the connection probe
    context = request_context(call)
    call.iam_context = context
    verb = verb_for(req.method, req.bucket, req.key, req.query)
    if req.key is None and req.method in ("GET", "HEAD"):
        scope = list_scope(principal, req.bucket, req.q("prefix") or "", context)
        if scope is None:
            raise errors.AccessDenied()
        call.list_filtered = scope is ListScope.FILTERED
        return
    if req.key is None and verb == "delete":
        # DeleteObjects: every key is re-checked by the operation, so the gate only asks that
        # the caller can reach the bucket at all and is not denied on it outright.
        decision = evaluate(principal, "delete", req.bucket, None, context)
        if decision is Decision.DENY or not (
            decision is Decision.ALLOW or can_see_bucket(principal, req.bucket)
        ):
            raise errors.AccessDenied()
        return
    if not allowed(principal, verb, req.bucket, req.key, context):
        raise errors.AccessDenied()


def may(call: Call, verb: str, bucket: str, key: str | None) -> bool:
    principal = call.principal
    if principal is None:
        return True
    return allowed(principal, verb, bucket, key, call.iam_context)


def require(call: Call, verb: str, bucket: str, key: str | None) -> None:
    if not may(call, verb, bucket, key):
        _audit_denial(call, verb, bucket, key)
        raise errors.AccessDenied()


def shows_key(call: Call, key: str) -> bool:
    principal = call.principal
    if principal is None or not call.list_filtered:
        return True
    return may_see_key(principal, call.bucket, key, call.iam_context)


def shows_prefix(call: Call, prefix: str) -> bool:
    principal = call.principal
    if principal is None or not call.list_filtered:
        return True
    return may_see_prefix(principal, call.bucket, prefix, call.iam_context)


def shows_bucket(call: Call, bucket: str) -> bool:
    principal = call.principal
    return principal is None or can_see_bucket(principal, bucket)
