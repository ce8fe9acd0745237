"""Multipart upload operations (storage.md §7)."""

from __future__ import annotations

from datetime import UTC, datetime

from deltaglider_proxy.engine.keys import parse_key
from deltaglider_proxy.engine.multipart import MAX_PART_NUMBER, CompletedPart
from deltaglider_proxy.engine.objects import NewObject
from deltaglider_proxy.engine.spool import SpooledFile
from deltaglider_proxy.s3api import authorize, errors
from deltaglider_proxy.s3api import xml as x
from deltaglider_proxy.s3api.body import read_small, spool_body
from deltaglider_proxy.s3api.checksums import ALGORITHMS
from deltaglider_proxy.s3api.conditions import parse_range
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response, xml_response
from deltaglider_proxy.s3api.operations.buckets import require_bucket
from deltaglider_proxy.s3api.operations.objects import copy_source_info, new_object_from_request, spool_object


def upload_id(call: Call) -> str:
    return call.req.q("uploadId") or ""


async def create_multipart_upload(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    parse_key(call.key)  # refuse a bad key now, not after the parts were uploaded
    return await start_upload(call, new_object_from_request(call.req))


async def start_upload(call: Call, new: NewObject, layout_metadata: dict[str, str] | None = None) -> Response:
    """Create the upload (the key and policy already checked) and answer with its id."""
    algorithm = (call.req.header("x-amz-checksum-algorithm") or "").upper() or None
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise errors.InvalidRequest(f"Checksum algorithm {algorithm} is not supported")
    checksum_type = (call.req.header("x-amz-checksum-type") or "").upper() or None
    if checksum_type not in (None, "COMPOSITE", "FULL_OBJECT"):
        raise errors.InvalidRequest("x-amz-checksum-type must be COMPOSITE or FULL_OBJECT")
    upload = await call.services.multipart.create(
        call.bucket, call.key, new, algorithm, checksum_type, layout_metadata=layout_metadata
    )
    body = x.el("Bucket", call.bucket) + x.el("Key", call.key) + x.el("UploadId", upload.upload_id)
    response = xml_response(x.document("InitiateMultipartUploadResult", body))
    if algorithm:
        response.set("x-amz-checksum-algorithm", algorithm)
        response.set("x-amz-checksum-type", checksum_type or "COMPOSITE")
    return response


def part_number(call: Call) -> int:
    text = call.req.q("partNumber") or ""
    if not text.isdigit() or not 1 <= int(text) <= MAX_PART_NUMBER:
        raise errors.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive")
    return int(text)


async def upload_part(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    number = part_number(call)
    store = call.services.multipart
    store.parts(upload_id(call), call.bucket, call.key)
    body = await spool_body(call.req, call.services.spool, call.auth, call.services.max_object_size)
    part = await store.upload_part(upload_id(call), call.bucket, call.key, number, body)
    response = Response(status=200, headers=[("etag", part.etag)])
    for algorithm, value in part.checksums.items():
        response.set(f"x-amz-checksum-{algorithm.lower()}", value)
    return response


async def upload_part_copy(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    number = part_number(call)
    store = call.services.multipart
    store.parts(upload_id(call), call.bucket, call.key)
    src_bucket, src_key, info = await copy_source_info(call)
    start, end = copy_range(call, info.size)
    body = await spool_object(call, info, src_bucket, src_key, start, end)
    assert isinstance(body, SpooledFile)
    return await copied_part(call, number, body)


def copy_range(call: Call, size: int) -> tuple[int, int]:
    """The [start, end) slice x-amz-copy-source-range asks of a source of ``size`` bytes."""
    range_header = call.req.header("x-amz-copy-source-range")
    if range_header is None:
        return 0, size
    if not range_header.startswith("bytes=") or "-" not in range_header:
        raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last")
    first_text, _, last_text = range_header[6:].partition("-")
    if not first_text.isdigit() or not last_text.isdigit():
        raise errors.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last")
    first, last = int(first_text), int(last_text)
    if first > last or last >= size:
        raise errors.InvalidRange()
    span = parse_range(f"bytes={first}-{last}", size)
    assert span is not None
    return span[0], span[1] + 1


async def copied_part(call: Call, number: int, body: SpooledFile) -> Response:
    part = await call.services.multipart.upload_part(upload_id(call), call.bucket, call.key, number, body)
    modified = datetime.fromtimestamp(part.last_modified, UTC)
    result = x.el("ETag", part.etag) + x.el("LastModified", x.iso8601(modified))
    return xml_response(x.document("CopyPartResult", result))


def _parse_complete(data: bytes) -> list[CompletedPart]:
    root = x.parse(data)
    if x.local(root.tag) != "CompleteMultipartUpload":
        raise errors.MalformedXML()
    parts = []
    for element in x.children(root, "Part"):
        number_text = (x.child_text(element, "PartNumber") or "").strip()
        etag = x.child_text(element, "ETag")
        if not number_text.isdigit() or etag is None:
            raise errors.MalformedXML()
        checksums = {}
        for algorithm in ALGORITHMS:
            value = x.child_text(element, "Checksum" + algorithm)
            if value:
                checksums[algorithm] = value.strip()
        parts.append(CompletedPart(int(number_text), etag.strip(), checksums))
    return parts


async def requested_parts(call: Call) -> list[CompletedPart]:
    """Complete's part list, once the bucket exists and the quota admits the assembled size."""
    await require_bucket(call)
    requested = _parse_complete(await read_small(call.req, x.MAX_XML_BODY))
    _, uploaded = call.services.multipart.parts(upload_id(call), call.bucket, call.key)
    sizes = {part.number: part.size for part in uploaded}
    incoming = sum(sizes.get(part.number, 0) for part in requested)
    await call.services.quotas.check_write(call.bucket, incoming)
    return requested


def completed(call: Call, etag: str, checksums: dict[str, str]) -> Response:
    body = [
        x.el("Location", f"/{call.bucket}/{call.key}"),
        x.el("Bucket", call.bucket),
        x.el("Key", call.key),
        x.el("ETag", etag),
    ]
    for algorithm, value in checksums.items():
        body.append(x.el("Checksum" + algorithm, value))
    if checksums:
        body.append(
            x.el("ChecksumType", "COMPOSITE" if any("-" in v for v in checksums.values()) else "FULL_OBJECT")
        )
    return xml_response(x.document("CompleteMultipartUploadResult", body))


async def complete_multipart_upload(call: Call) -> Response:
    requested = await requested_parts(call)
    info, checksums = await call.services.multipart.complete(
        upload_id(call), call.bucket, call.key, requested
    )
    call.services.quotas.record_write(call.bucket, info.stored_size)
    response = completed(call, info.etag, checksums)
    response.set("x-amz-storage-type", info.storage_type)
    return response


async def abort_multipart_upload(call: Call) -> Response:
    await require_bucket(call)
    await call.services.multipart.abort(upload_id(call), call.bucket, call.key)
    return Response(status=204)


def _bounded(call: Call, name: str, default: int = 1000) -> int:
    text = call.req.q(name)
    if text is None:
        return default
    if not text.isdigit():
        raise errors.InvalidArgument(f"{name} must be a non-negative integer")
    return max(0, min(int(text), 1000))


async def list_parts(call: Call) -> Response:
    await require_bucket(call)
    upload, parts = call.services.multipart.parts(upload_id(call), call.bucket, call.key)
    marker_text = call.req.q("part-number-marker") or "0"
    marker = int(marker_text) if marker_text.isdigit() else 0
    max_parts = _bounded(call, "max-parts")
    remaining = [p for p in parts if p.number > marker]
    page = remaining[:max_parts]
    truncated = len(remaining) > len(page)
    body = [
        x.el("Bucket", call.bucket),
        x.el("Key", call.key),
        x.el("UploadId", upload.upload_id),
        x.el("PartNumberMarker", marker),
        x.el("NextPartNumberMarker", page[-1].number if page else 0),
        x.el("MaxParts", max_parts),
        x.el("IsTruncated", truncated),
        x.raw("Initiator", x.el("ID", "dgp") + x.el("DisplayName", "deltaglider")),
        x.raw("Owner", x.el("ID", "dgp") + x.el("DisplayName", "deltaglider")),
        x.el("StorageClass", "STANDARD"),
    ]
    if upload.checksum_algorithm:
        body.append(x.el("ChecksumAlgorithm", upload.checksum_algorithm))
    for part in page:
        entry = [
            x.el("PartNumber", part.number),
            x.el("LastModified", x.iso8601(datetime.fromtimestamp(part.last_modified, UTC))),
            x.el("ETag", part.etag),
            x.el("Size", part.size),
        ]
        for algorithm, value in part.checksums.items():
            entry.append(x.el("Checksum" + algorithm, value))
        body.append(x.raw("Part", entry))
    return xml_response(x.document("ListPartsResult", body))


async def list_multipart_uploads(call: Call) -> Response:
    await require_bucket(call)
    prefix = call.req.q("prefix") or ""
    key_marker = call.req.q("key-marker") or ""
    id_marker = call.req.q("upload-id-marker") or ""
    max_uploads = _bounded(call, "max-uploads")
    candidates = [
        u
        for u in call.services.multipart.uploads(call.bucket)
        if u.key.startswith(prefix)
        and (u.key > key_marker or (u.key == key_marker and id_marker and u.upload_id > id_marker))
        and authorize.shows_key(call, u.key)  # a filtered caller sees only uploads it could read
    ]
    page = candidates[:max_uploads]
    truncated = len(candidates) > len(page)
    body = [
        x.el("Bucket", call.bucket),
        x.el("KeyMarker", key_marker),
        x.el("UploadIdMarker", id_marker),
    ]
    if truncated and page:
        body.append(x.el("NextKeyMarker", page[-1].key))
        body.append(x.el("NextUploadIdMarker", page[-1].upload_id))
    if prefix:
        body.append(x.el("Prefix", prefix))
    body.append(x.el("MaxUploads", max_uploads))
    body.append(x.el("IsTruncated", truncated))
    for upload in page:
        body.append(
            x.raw(
                "Upload",
                x.el("Key", upload.key)
                + x.el("UploadId", upload.upload_id)
                + x.raw("Initiator", x.el("ID", "dgp") + x.el("DisplayName", "deltaglider"))
                + x.raw("Owner", x.el("ID", "dgp") + x.el("DisplayName", "deltaglider"))
                + x.el("StorageClass", "STANDARD")
                + x.el("Initiated", x.iso8601(upload.initiated_at)),
            )
        )
    return xml_response(x.document("ListMultipartUploadsResult", body))
