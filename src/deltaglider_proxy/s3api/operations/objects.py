"""Object operations: PUT, GET, HEAD, DELETE, DeleteObjects, CopyObject (storage.md §2–§6)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote

from deltaglider_proxy.engine.objects import NewObject, ObjectInfo, ObjectMissing
from deltaglider_proxy.engine.spool import SpooledFile
from deltaglider_proxy.s3api import authorize, errors
from deltaglider_proxy.s3api import xml as x
from deltaglider_proxy.s3api.body import read_small, spool_body
from deltaglider_proxy.s3api.conditions import (
    check_copy_source,
    check_read,
    check_write,
    http_date,
    parse_range,
)
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response, S3Request, xml_response
from deltaglider_proxy.s3api.operations.buckets import canned_acl, require_bucket

STORED_HEADERS = ("content-encoding", "content-disposition", "cache-control", "expires", "content-language")
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-disposition": "content-disposition",
    "response-cache-control": "cache-control",
    "response-content-encoding": "content-encoding",
    "response-content-language": "content-language",
    "response-expires": "expires",
}
MAX_DELETE_KEYS = 1000
# S3's limit on the user-defined metadata of one object.
MAX_USER_METADATA_BYTES = 2048


def _visible_ascii(value: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F or c == "\t" for c in value)


def new_object_from_request(req: S3Request) -> NewObject:
    """Content-Type, x-amz-meta-* and the stored HTTP headers of a PUT/Create/Copy(REPLACE)."""
    user: dict[str, str] = {}
    size = 0
    for name, value in req.headers.items():
        if not name.startswith("x-amz-meta-"):
            continue
        meta = name[len("x-amz-meta-") :]
        if meta.startswith("dg-") or not meta:
            continue  # the dg- namespace is ours
        if not _visible_ascii(value):
            continue
        user[meta] = value
        size += len(meta) + len(value)
    if size > MAX_USER_METADATA_BYTES:
        raise errors.MetadataTooLarge()
    stored = {h: req.headers[h] for h in STORED_HEADERS if h in req.headers}
    return NewObject(content_type=req.header("content-type"), user_metadata=user, stored_headers=stored)


def object_headers(info: ObjectInfo, call: Call, *, with_checksums: bool) -> list[tuple[str, str]]:
    headers = [
        ("etag", info.etag),
        ("last-modified", http_date(info.last_modified)),
        ("accept-ranges", "bytes"),
        ("content-type", info.content_type or "application/octet-stream"),
    ]
    headers.extend(info.stored_headers.items())
    for name, value in sorted(info.user_metadata.items()):
        headers.append((f"x-amz-meta-{name}", value))
    if with_checksums:
        for algorithm, value in info.checksums.items():
            headers.append((f"x-amz-checksum-{algorithm.lower()}", value))
            headers.append(("x-amz-checksum-type", "COMPOSITE" if "-" in value else "FULL_OBJECT"))
    if call.services.runtime.debug_headers:
        headers.append(("x-amz-storage-type", info.storage_type))
        headers.append(("x-deltaglider-stored-size", str(info.stored_size)))
    return headers


def _overrides(call: Call, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    wanted = {h: call.req.q(p) for p, h in RESPONSE_OVERRIDES.items() if call.req.has(p)}
    if not wanted:
        return headers
    kept = [(k, v) for k, v in headers if k not in wanted]
    return kept + [(k, v or "") for k, v in wanted.items()]


async def _head_info(call: Call) -> ObjectInfo:
    try:
        return await call.services.engine.head(call.bucket, call.key)
    except ObjectMissing:
        raise errors.NoSuchKey(resource=call.key) from None


async def head_object(call: Call) -> Response:
    info = await _head_info(call)
    return _read_response(call, info, head=True)


def _read_response(call: Call, info: ObjectInfo, *, head: bool) -> Response:
    verdict = check_read(call.req.headers, info.etag, info.last_modified)
    if verdict == 412:
        raise errors.PreconditionFailed()
    if verdict == 304:
        return Response(
            status=304, headers=[("etag", info.etag), ("last-modified", http_date(info.last_modified))]
        )
    span = parse_range(call.req.header("range"), info.size)
    if call.req.q("partNumber") not in (None, "1"):
        raise errors.InvalidPart("This object has only one part")
    checksum_mode = (call.req.header("x-amz-checksum-mode") or "").upper() == "ENABLED"
    headers = _overrides(call, object_headers(info, call, with_checksums=checksum_mode and span is None))
    if span is None:
        return Response(status=200, headers=headers, content_length=info.size, stream=_empty())
    first, last = span
    headers.append(("content-range", f"bytes {first}-{last}/{info.size}"))
    return Response(status=206, headers=headers, content_length=last - first + 1, stream=_empty())


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def get_object(call: Call) -> Response:
    info = await _head_info(call)
    response = _read_response(call, info, head=False)
    if response.status in (200, 206):
        start, end = 0, info.size
        if response.status == 206:
            content_range = dict(response.headers)["content-range"]
            first, last = content_range.split(" ", 1)[1].split("/", 1)[0].split("-")
            start, end = int(first), int(last) + 1
        _, stream = await call.services.engine.open(call.bucket, call.key, start, end, known=info)
        response.stream = stream
    return response


def declared_length(call: Call) -> int | None:
    """The body length the client announced (decoded length for aws-chunked bodies)."""
    for name in ("x-amz-decoded-content-length", "content-length"):
        text = call.req.header(name)
        if text is not None and text.isdigit():
            return int(text)
    return None


async def put_object(call: Call) -> Response:
    await require_bucket(call)
    services = call.services
    declared = declared_length(call)
    await services.quotas.check_write(call.bucket, declared or 0)
    new = new_object_from_request(call.req)
    if (
        call.req.headers.get("if-match")
        or call.req.headers.get("if-none-match")
        or call.req.headers.get("if-unmodified-since")
    ):
        try:
            current = await services.engine.head(call.bucket, call.key)
            check_write(call.req.headers, (current.etag, current.last_modified))
        except ObjectMissing:
            check_write(call.req.headers, None)
    body = await spool_body(
        call.req,
        services.spool,
        call.auth,
        services.max_object_size,
        lambda size: services.engine.sealing_writer(call.bucket, size),
    )
    if declared is None:
        try:
            await services.quotas.check_write(call.bucket, body.size)
        except Exception:
            body.discard()
            raise
    checksums = dict(body.checksums)
    new = NewObject(
        content_type=new.content_type,
        user_metadata=new.user_metadata,
        stored_headers=new.stored_headers,
        checksums=checksums,
    )
    info = await services.engine.put(call.bucket, call.key, body, new)
    services.quotas.record_write(call.bucket, info.stored_size)
    headers = [("etag", info.etag), ("x-amz-storage-type", info.storage_type)]
    for algorithm, value in checksums.items():
        headers.append((f"x-amz-checksum-{algorithm.lower()}", value))
    return Response(status=200, headers=headers)


async def delete_object(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    await call.services.engine.delete(call.bucket, call.key)
    call.services.quotas.record_delete(call.bucket)
    return Response(status=204)


async def delete_objects(call: Call) -> Response:
    return await delete_many(call, call.services.engine.delete)


async def delete_many(call: Call, delete: Callable[[str, str], Awaitable[object]]) -> Response:
    """DeleteObjects with ``delete(bucket, key)`` removing one key."""
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    root = x.parse(await read_small(call.req, x.MAX_XML_BODY))
    if x.local(root.tag) != "Delete":
        raise errors.MalformedXML()
    quiet = (x.child_text(root, "Quiet") or "").strip().lower() == "true"
    objects = x.children(root, "Object")
    if len(objects) > MAX_DELETE_KEYS:
        raise errors.MalformedXML("DeleteObjects supports at most 1000 keys per request")
    if not objects:
        raise errors.MalformedXML()
    deleted: list[str] = []
    failed: list[str] = []
    for obj in objects:
        key = x.child_text(obj, "Key")
        if key is None:
            raise errors.MalformedXML()
        version = x.child_text(obj, "VersionId")
        version_xml = x.el("VersionId", version) if version is not None else ""
        try:
            authorize.require(call, "delete", call.bucket, key)
            await delete(call.bucket, key)
        except Exception as exc:  # noqa: BLE001 - reported per key, as S3 does
            from deltaglider_proxy.s3api.errormap import to_s3_error

            error = to_s3_error(exc)
            failed.append(
                x.raw(
                    "Error",
                    x.el("Key", key)
                    + version_xml
                    + x.el("Code", error.code)
                    + x.el("Message", error.message),
                )
            )
            continue
        call.deleted_keys.append(key)
        if not quiet:
            deleted.append(x.raw("Deleted", x.el("Key", key) + version_xml))
    call.services.quotas.record_delete(call.bucket)
    return xml_response(x.document("DeleteResult", deleted + failed))


def parse_copy_source(header: str) -> tuple[str, str]:
    source = unquote(header)
    if "?" in source:
        path, _, query = source.partition("?")
        if query and not query.startswith("versionId=null"):
            raise errors.InvalidArgument("Copy source versionId/query parameters are not supported")
        source = path
    source = source.lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise errors.InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey"
        )
    return bucket, key


async def copy_source_info(call: Call) -> tuple[str, str, ObjectInfo]:
    bucket, key = parse_copy_source(call.req.header("x-amz-copy-source") or "")
    authorize.require(call, "read", bucket, key)  # copying is reading the source (§3.3)
    engine = call.services.engine
    if not await engine.bucket_exists(bucket):
        raise errors.NoSuchBucket(resource=bucket)
    try:
        info = await engine.head(bucket, key)
    except ObjectMissing:
        raise errors.NoSuchKey(resource=key) from None
    check_copy_source(call.req.headers, info.etag, info.last_modified)
    return bucket, key, info


async def spool_object(
    call: Call, source: ObjectInfo, bucket: str, key: str, start: int = 0, end: int | None = None
) -> object:
    """Copy (a slice of) the stored object ``source`` (its fresh head, from
    :func:`copy_source_info`) into a fresh spool file, hashing on the way."""
    _, stream = await call.services.engine.open(bucket, key, start, end, known=source)
    return await spool_stream(call, stream, (end or 0) - start if end is not None else None)


async def spool_stream(call: Call, stream: AsyncIterator[bytes], size: int | None) -> SpooledFile:
    writer = call.services.spool.writer(size)
    try:
        async for chunk in stream:
            await writer.write(chunk)
        return await writer.finish()
    except BaseException:
        writer.abort()
        raise


async def copy_object(call: Call) -> Response:
    await require_bucket(call)
    src_bucket, src_key, info = await copy_source_info(call)
    if info.size > call.services.max_object_size:
        raise errors.EntityTooLarge()
    await call.services.quotas.check_write(call.bucket, info.size)
    directive = (call.req.header("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.InvalidArgument("Unknown metadata directive.")
    if directive == "COPY":
        new = NewObject(
            content_type=info.content_type,
            user_metadata=dict(info.user_metadata),
            stored_headers=dict(info.stored_headers),
            checksums={k: v for k, v in info.checksums.items() if "-" not in v},
        )
    else:
        new = new_object_from_request(call.req)
    stored = await call.services.engine.copy_in_backend(info, src_bucket, call.bucket, call.key, new)
    if stored is None:
        body = await spool_object(call, info, src_bucket, src_key)
        assert isinstance(body, SpooledFile)
        stored = await call.services.engine.put(call.bucket, call.key, body, new)
    call.services.quotas.record_write(call.bucket, stored.stored_size)
    result = x.el("ETag", stored.etag) + x.el("LastModified", x.iso8601(stored.last_modified))
    return xml_response(x.document("CopyObjectResult", result))


async def get_object_acl(call: Call) -> Response:
    await _head_info(call)
    return xml_response(canned_acl())


def b64_md5(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
