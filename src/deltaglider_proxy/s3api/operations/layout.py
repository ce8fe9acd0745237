"""Layout access at the edge: S3 requests served on stored objects by their backend names.

With ``advanced.layout_access`` on, a request carrying ``x-deltaglider-layout: raw`` addresses
the bucket's stored objects as they are (``reference.bin``, ``<name>.delta``, passthrough
objects, ``dir/`` markers), their DeltaGlider records travelling as ``x-amz-meta-dg-*``
(storage.md §1.5.2) — the view a proxy chained in front of this one needs from its S3 backend.
The header changes the representation only: authentication, public prefixes, quotas and freeze
apply exactly as to any other request. Operations without a layout form (uploading or
listing parts, aborting…) are the ordinary ones.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from deltaglider_proxy.engine.keys import check_layout_name
from deltaglider_proxy.engine.layout import EMPTY_MD5, LayoutObject, LayoutRecordMissing
from deltaglider_proxy.engine.objects import NewObject
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api import xml as x
from deltaglider_proxy.s3api.body import spool_body
from deltaglider_proxy.s3api.conditions import (
    check_copy_source,
    check_read,
    check_write,
    http_date,
    parse_range,
)
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response, S3Request, xml_response
from deltaglider_proxy.s3api.operations.buckets import require_bucket
from deltaglider_proxy.s3api.operations.listing import parse_list_request, render_listing, visible
from deltaglider_proxy.s3api.operations.multipart import (
    completed,
    copied_part,
    copy_range,
    part_number,
    requested_parts,
    start_upload,
    upload_id,
)
from deltaglider_proxy.s3api.operations.objects import (
    declared_length,
    delete_many,
    parse_copy_source,
    spool_stream,
)

LAYOUT_HEADER = "x-deltaglider-layout"
META_PREFIX = "x-amz-meta-"


def wants_layout(call: Call) -> bool:
    """Whether this request is served in layout mode. Without ``layout_access`` the header is
    ignored; with it, a value other than ``raw`` is a client mistake worth a 400, not a
    silent logical write."""
    value = call.req.header(LAYOUT_HEADER)
    if value is None or not call.services.layout_access:
        return False
    if value.strip().lower() != "raw":
        raise errors.InvalidArgument(f"{LAYOUT_HEADER} must be 'raw'")
    return True


# ---------------------------------------------------------------------------------------------
# Metadata on the wire. A value is stored as the text the client sent; values that cannot travel
# as plain header text (non-ASCII names written by this proxy's own engine) are sent back as an
# RFC 2047 encoded word, as S3 itself returns them.
# ---------------------------------------------------------------------------------------------


def _from_wire(value: str) -> str:
    # S3Request decodes header bytes as latin-1; a client sending raw UTF-8 meant UTF-8.
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _to_wire(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    encoded = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return f"=?UTF-8?B?{encoded}?="


def request_metadata(req: S3Request) -> dict[str, str]:
    """The request's ``x-amz-meta-*`` headers, names without the prefix."""
    return {
        name[len(META_PREFIX) :]: _from_wire(value)
        for name, value in req.headers.items()
        if name.startswith(META_PREFIX) and len(name) > len(META_PREFIX)
    }


def _object_headers(obj: LayoutObject) -> list[tuple[str, str]]:
    headers = [
        ("etag", obj.etag),
        ("last-modified", http_date(obj.last_modified)),
        ("accept-ranges", "bytes"),
        ("content-type", obj.content_type),
    ]
    for name, value in sorted(obj.metadata.items()):
        headers.append((META_PREFIX + name, _to_wire(value)))
    return headers


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


async def _find(call: Call) -> LayoutObject:
    found = await call.services.engine.layout.find(call.bucket, call.key)
    if found is None:
        raise errors.NoSuchKey(resource=call.key)
    return found


def _read_response(call: Call, obj: LayoutObject) -> tuple[Response, tuple[int, int] | None]:
    verdict = check_read(call.req.headers, obj.etag, obj.last_modified)
    if verdict == 412:
        raise errors.PreconditionFailed()
    if verdict == 304:
        return Response(
            status=304, headers=[("etag", obj.etag), ("last-modified", http_date(obj.last_modified))]
        ), None
    if call.req.q("partNumber") not in (None, "1"):
        raise errors.InvalidPart("This object has only one part")
    span = parse_range(call.req.header("range"), obj.size)
    headers = _object_headers(obj)
    if span is None:
        return Response(status=200, headers=headers, content_length=obj.size, stream=_empty()), None
    first, last = span
    headers.append(("content-range", f"bytes {first}-{last}/{obj.size}"))
    return Response(status=206, headers=headers, content_length=last - first + 1, stream=_empty()), span


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def layout_head_object(call: Call) -> Response:
    response, _ = _read_response(call, await _find(call))
    return response


async def layout_get_object(call: Call) -> Response:
    obj = await _find(call)
    response, span = _read_response(call, obj)
    if response.status in (200, 206):
        start, end = (0, obj.size) if span is None else (span[0], span[1] + 1)
        response.stream = call.services.engine.layout.open(call.bucket, call.key, start, end)
    return response


async def _check_preconditions(call: Call) -> None:
    headers = call.req.headers
    if not any(headers.get(h) for h in ("if-match", "if-none-match", "if-unmodified-since")):
        return
    current = await call.services.engine.layout.find(call.bucket, call.key)
    check_write(headers, None if current is None else (current.etag, current.last_modified))


async def layout_put_object(call: Call) -> Response:
    """Store the body verbatim under the key with the record its ``x-amz-meta-*`` carry; an
    empty body under a name ending in ``/`` without a record is a directory marker."""
    await require_bucket(call)
    services = call.services
    layout = services.engine.layout
    check_layout_name(call.key)
    declared = declared_length(call)
    await services.quotas.check_write(call.bucket, declared or 0)
    record = layout.parse_record(call.key, request_metadata(call.req))
    marker = record is None and call.key.endswith("/")
    if record is None and not (marker and not declared):
        raise LayoutRecordMissing()
    await _check_preconditions(call)
    create_only = (call.req.header("if-none-match") or "").strip() == "*"
    body = await spool_body(call.req, services.spool, call.auth, services.max_object_size)
    try:
        if declared is None:
            await services.quotas.check_write(call.bucket, body.size)
        if record is None and body.size:
            raise LayoutRecordMissing()
    except BaseException:
        body.discard()
        raise
    md5_hex, size, checksums = body.md5_hex, body.size, dict(body.checksums)
    if record is None:
        body.discard()
        await layout.write_directory_marker(call.bucket, call.key)
        md5_hex = EMPTY_MD5
    else:
        await layout.write(call.bucket, call.key, body, record, if_absent=create_only)
    services.quotas.record_write(call.bucket, size)
    headers = [("etag", f'"{md5_hex}"')]
    for algorithm, value in checksums.items():
        headers.append((f"x-amz-checksum-{algorithm.lower()}", value))
    return Response(status=200, headers=headers)


async def layout_delete_object(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    await call.services.engine.layout.delete(call.bucket, call.key)
    call.services.quotas.record_delete(call.bucket)
    return Response(status=204)


async def layout_delete_objects(call: Call) -> Response:
    return await delete_many(call, call.services.engine.layout.delete)


async def _copy_source(call: Call) -> tuple[str, str, LayoutObject]:
    """The stored object x-amz-copy-source names, its x-amz-copy-source-if-* checked."""
    bucket, key = parse_copy_source(call.req.header("x-amz-copy-source") or "")
    layout = call.services.engine.layout
    if not await call.services.engine.bucket_exists(bucket):
        raise errors.NoSuchBucket(resource=bucket)
    source = await layout.find(bucket, key)
    if source is None:
        raise errors.NoSuchKey(resource=key)
    check_copy_source(call.req.headers, source.etag, source.last_modified)
    return bucket, key, source


async def layout_copy_object(call: Call) -> Response:
    """Server-side copy of a stored object; the record is the source's (COPY) or the one the
    request's x-amz-meta-* carry (REPLACE)."""
    await require_bucket(call)
    check_layout_name(call.key)
    src_bucket, src_key, source = await _copy_source(call)
    await call.services.quotas.check_write(call.bucket, source.size)
    directive = (call.req.header("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("Unknown metadata directive.")
    layout = call.services.engine.layout
    # COPY keeps the source's metadata exactly, as S3 does (re-parsed for the new name).
    metadata = source.metadata if directive == "COPY" else request_metadata(call.req)
    record = layout.parse_record(call.key, metadata)
    if record is None:
        raise LayoutRecordMissing()
    body = await spool_stream(call, layout.open(src_bucket, src_key), source.size)
    etag = f'"{body.md5_hex}"'
    stored = await layout.write(call.bucket, call.key, body, record)
    call.services.quotas.record_write(call.bucket, stored.size)
    result = x.el("ETag", etag) + x.el("LastModified", x.iso8601(stored.last_modified))
    return xml_response(x.document("CopyObjectResult", result))


async def layout_upload_part_copy(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    number = part_number(call)
    call.services.multipart.parts(upload_id(call), call.bucket, call.key)
    src_bucket, src_key, source = await _copy_source(call)
    start, end = copy_range(call, source.size)
    stream = call.services.engine.layout.open(src_bucket, src_key, start, end)
    return await copied_part(call, number, await spool_stream(call, stream, end - start))


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


async def layout_list_objects(call: Call) -> Response:
    request = parse_list_request(call)
    page = await call.services.engine.layout.list_page(
        call.bucket, request.prefix, request.delimiter or None, request.cursor, request.max_keys
    )
    objects, common_prefixes = visible(call, page.objects, page.common_prefixes)
    return render_listing(call, request, objects, common_prefixes, page.is_truncated, page.next_cursor)


# ---------------------------------------------------------------------------------------------
# Multipart: Create keeps the record, Complete writes the assembled parts verbatim
# ---------------------------------------------------------------------------------------------


async def layout_create_multipart_upload(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    check_layout_name(call.key)
    metadata = request_metadata(call.req)
    if call.services.engine.layout.parse_record(call.key, metadata) is None:
        raise LayoutRecordMissing()  # refused now, not after the parts were uploaded
    return await start_upload(call, NewObject(), layout_metadata=metadata)


async def layout_complete_multipart_upload(call: Call) -> Response:
    requested = await requested_parts(call)
    stored, etag, checksums = await call.services.multipart.complete_layout(
        upload_id(call), call.bucket, call.key, requested
    )
    call.services.quotas.record_write(call.bucket, stored.size)
    return completed(call, etag, checksums)
