"""The S3 edge as one ASGI handler: parse → authenticate → dispatch → respond → observe.

Every response carries ``x-amz-request-id``; every request logs one structured line with it and
is counted in the ``deltaglider_http_*`` metrics. Requests refused by authentication are counted
too (control-plane.md §1.5 [D]: the metrics sit outside authentication). Successful writes are
recorded in the audit ring (§10.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import unquote

from deltaglider_proxy.engine.keys import bucket_name_valid
from deltaglider_proxy.observability.audit import log_entry, new_entry
from deltaglider_proxy.observability.logs import request_id_var
from deltaglider_proxy.observability.metrics import operation_label
from deltaglider_proxy.policy.quotas import BucketFrozen, QuotaExceeded
from deltaglider_proxy.s3api import dispatch, errors
from deltaglider_proxy.s3api.authorize import authorize
from deltaglider_proxy.s3api.body import ClientDisconnected
from deltaglider_proxy.s3api.context import Call, Services
from deltaglider_proxy.s3api.errormap import to_s3_error
from deltaglider_proxy.s3api.http import (
    MAX_HEADER_BYTES,
    Receive,
    Response,
    S3Request,
    Scope,
    Send,
    collect_headers,
    parse_query,
    send_response,
)
from deltaglider_proxy.s3api.sigv4 import SignedRequest, has_credentials, verify

log = logging.getLogger("deltaglider_proxy.access")
COMMON_HEADERS = [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")]
DRAIN_LIMIT = 1024 * 1024
# Handlers whose success is an audited S3 write (control-plane.md §10.2); layout-access
# variants (``layout_…``) are the same writes and audited alike.
AUDITED_WRITES = {
    "put_object": "s3_put",
    "complete_multipart_upload": "s3_put",
    "copy_object": "s3_copy",
    "delete_object": "s3_delete",
    "create_bucket": "s3_create_bucket",
    "delete_bucket": "s3_delete_bucket",
}


def _split_target(raw_path: str, host: str, domains: tuple[str, ...]) -> tuple[str | None, str | None, bool]:
    """(bucket, key, virtual_host) from the raw path and the Host header."""
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    hostname = hostname.lower()
    for domain in domains:
        suffix = "." + domain
        if hostname.endswith(suffix) and len(hostname) > len(suffix):
            bucket = hostname[: -len(suffix)]
            key = unquote(raw_path[1:]) if len(raw_path) > 1 else None
            return bucket, key, True
    path = raw_path[1:] if raw_path.startswith("/") else raw_path
    if not path:
        return None, None, False
    bucket_part, sep, key_part = path.partition("/")
    bucket = unquote(bucket_part)
    key = unquote(key_part) if sep and key_part else None
    return bucket, key, False


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


async def _drain(req: S3Request) -> None:
    """Read (and drop) a bounded amount of an unread body so the client sees our answer."""
    drained = 0
    while drained < DRAIN_LIMIT and not req.body_complete:
        message = await req.receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _auth_failure_reason(exc: Exception, presigned: bool) -> str:
    """The ``reason`` label of ``deltaglider_auth_failures_total`` for a failed verification."""
    if isinstance(exc, errors.S3Error) and exc.reason == "invalid_access_key":
        return "invalid_access_key"
    if errors.SignatureDoesNotMatch.matches(exc):
        return "invalid_signature"
    # Malformed, expired or skewed: a broken presigned URL, or a broken Authorization header.
    return "invalid_presigned" if presigned else "invalid_signature"


def _principal(call: Call) -> str:
    """Who the audit trail and the log name (control-plane.md §0, §10.2)."""
    if call.principal is not None:
        return call.principal.name
    if call.auth is not None:
        return "$bootstrap"
    if call.public_prefixes is not None:
        return "$anonymous"
    return "anonymous"


def _response_length(response: Response) -> int | None:
    """The Content-Length the response goes out with, or None (as send_response decides it)."""
    if response.stream is not None:
        return response.content_length
    for name, value in response.headers:
        if name.lower() == "content-length":
            return int(value) if value.isdigit() else None
    return None if response.status in (204, 304) else len(response.body)


class S3Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def _authenticate(self, req: S3Request) -> Call:
        call = Call(self.services, req)
        access = self.services.access
        if access.mode == "open":
            return call
        if req.method == "HEAD" and req.bucket is None:
            return call  # client connection probe (control-plane.md §2.4.1)
        signed = SignedRequest(
            method=req.method, raw_path=req.raw_path, query_string=req.query_string, headers=req.headers
        )
        metrics = self.services.metrics
        if not has_credentials(signed):
            public = self._public_grant(req)
            if public is not None:
                call.public_prefixes = public
                return call
            if req.has("AWSAccessKeyId") and req.has("Signature"):
                # A Signature Version 2 presigned URL (boto3's default for presigning without a
                # signature_version): say which scheme to use rather than a bare AccessDenied.
                metrics.auth_failed("invalid_presigned")
                raise errors.InvalidRequest("Please use AWS4-HMAC-SHA256.")
            metrics.auth_failed("missing_header")
            raise errors.AccessDenied()
        limiter = self.services.limiter
        if limiter.is_limited("s3", req.client_ip):
            raise errors.SlowDown("Rate limited due to repeated auth failures")
        delay = limiter.delay_seconds("s3", req.client_ip)
        if delay:
            await asyncio.sleep(delay)
        try:
            call.auth = verify(
                signed,
                access,
                now=datetime.now(UTC),
                clock_skew_seconds=self.services.runtime.clock_skew_seconds,
            )
        except errors.S3Error as exc:
            limiter.record_failure("s3", req.client_ip, exc.code)
            metrics.auth_failed(_auth_failure_reason(exc, "authorization" not in req.headers))
            # A log line, not an audit-ring entry: S3 auth failures can be a flood (§2.4.1).
            log_entry(
                new_entry(
                    "login_failed",
                    target=exc.reason or exc.code,
                    ip=req.client_ip,
                    ua=req.headers.get("user-agent", ""),
                    bucket=req.bucket or "",
                    path=req.raw_path[:512],
                )
            )
            raise
        principal = access.principal_for(call.auth.access_key_id)
        if principal is None or not principal.enabled:
            # Disabled (or deleted mid-request): the same answer as a bad signature, no key oracle.
            limiter.record_failure("s3", req.client_ip, "AccessDenied")
            metrics.auth_failed("user_disabled")
            raise errors.AccessDenied()
        limiter.record_success("s3", req.client_ip)
        metrics.auth_succeeded()
        call.principal = principal
        return call

    def _audit(self, call: Call, operation: str) -> None:
        name = operation.removeprefix("layout_")
        if name == "delete_objects":
            action, keys = "s3_delete", call.deleted_keys  # one entry per deleted key
        elif name in AUDITED_WRITES:
            action, keys = AUDITED_WRITES[name], [call.req.key or ""]
        else:
            return
        req = call.req
        for key in keys:
            self.services.audit.record(
                action,
                user=_principal(call),
                ip=req.client_ip,
                ua=req.headers.get("user-agent", ""),
                bucket=req.bucket or "",
                path=key,
            )

    def _public_grant(self, req: S3Request) -> tuple[str, ...] | None:
        """The bucket's public prefixes when this unsigned request is a read they admit."""
        if req.bucket is None or req.method not in ("GET", "HEAD"):
            return None
        public = self.services.public
        subs = [name for name in req.query if name in dispatch.SUBRESOURCES]
        if req.key is not None:
            if subs and subs != ["partNumber"]:
                return None
            admitted = public.admits_object(req.bucket, req.key)
        else:
            if subs:
                return None  # ?acl, ?uploads, ?location…: never anonymous
            admitted = public.admits_listing(req.bucket, req.q("prefix") or "")
        return public.prefixes(req.bucket) if admitted else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        token = request_id_var.set(request_id)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path_text = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(raw_path)
        raw_path_text = raw_path_text.split("?", 1)[0]
        query_string = scope.get("query_string", b"").decode("latin-1")
        raw_headers = scope.get("headers", [])
        headers = collect_headers(raw_headers)
        bucket, key, virtual = _split_target(
            raw_path_text, headers.get("host", ""), self.services.virtual_host_domains
        )
        req = S3Request(
            method=scope["method"].upper(),
            raw_path=raw_path_text,
            query_string=query_string,
            query=parse_query(query_string),
            headers=headers,
            bucket=bucket,
            key=key,
            client_ip=self.services.client_ips.resolve(_peer(scope), headers),
            _receive=receive,
            request_id=request_id,
            virtual_host=virtual,
        )
        # The request's shape (§9.1) until a handler is chosen, so refused requests still say
        # what they were; then the handler's own, finer name (upload_part, copy_object…).
        operation = operation_label(req.method, req.bucket, req.key)
        principal = "-"
        access_key = ""
        call: Call | None = None
        response: Response
        body_consumed = False
        try:
            if sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
                raise errors.RequestHeaderSectionTooLarge()
            if req.bucket is not None and not bucket_name_valid(req.bucket):
                raise errors.InvalidBucketName(resource=req.bucket)
            call = await self._authenticate(req)
            principal = _principal(call)
            access_key = call.auth.access_key_id if call.auth else ""
            authorize(call)
            handler = dispatch.resolve(call)
            operation = getattr(handler, "__name__", "-")
            response = await handler(call)
            body_consumed = True
        except ClientDisconnected:
            fields = self._fields(req, operation, principal, access_key, 499, 0, started)
            log.info("client disconnected", extra=fields)
            self._observe(req, 499, started, None)
            request_id_var.reset(token)
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes an S3 error response
            if isinstance(exc, QuotaExceeded):
                self.services.metrics.quota_rejected("exceeded")
            elif isinstance(exc, BucketFrozen):
                self.services.metrics.quota_rejected("frozen")
            error = to_s3_error(exc)
            response = Response(
                status=error.status,
                headers=[("content-type", "application/xml"), *error.headers.items()],
                body=b"" if req.method == "HEAD" else errors.render_error(error, request_id),
            )
            if not body_consumed:
                with contextlib.suppress(Exception):  # best effort only
                    await _drain(req)
        response.headers.extend(COMMON_HEADERS)
        response.headers.append(("x-amz-request-id", "0" if operation == "probe" else request_id))
        if call is not None and response.status < 300:
            self._audit(call, operation)
        sent = 0
        try:
            sent = await send_response(send, response, head=req.method == "HEAD")
        except Exception as exc:
            log.error(
                "response failed mid-stream: %r",
                exc,
                extra=self._fields(req, operation, principal, access_key, response.status, sent, started),
            )
            self._observe(req, response.status, started, _response_length(response))
            request_id_var.reset(token)
            raise
        fields = self._fields(req, operation, principal, access_key, response.status, sent, started)
        log.info("request", extra=fields)
        self._observe(req, response.status, started, _response_length(response))
        request_id_var.reset(token)

    def _observe(self, req: S3Request, status: int, started: float, response_bytes: int | None) -> None:
        length = req.headers.get("content-length", "")
        self.services.metrics.observe_request(
            req.method,
            operation_label(req.method, req.bucket, req.key),
            status,
            time.perf_counter() - started,
            int(length) if length.isdigit() else None,
            response_bytes,
        )

    def _fields(
        self,
        req: S3Request,
        operation: str,
        principal: str,
        access_key: str,
        status: int,
        sent: int,
        started: float,
    ) -> dict[str, object]:
        return {
            "method": req.method,
            "bucket": req.bucket or "",
            "key": req.key or "",
            "operation": operation,
            "principal": principal,
            "access_key": access_key,
            "status": status,
            "bytes_in": int(length) if (length := req.headers.get("content-length", "0")).isdigit() else 0,
            "bytes_out": sent,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "storage": self.services.storage_type(req.bucket),
            "client_ip": req.client_ip,
        }
