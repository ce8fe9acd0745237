"""ListObjects v1 and v2 (storage.md §4)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from deltaglider_proxy.engine.objects import ObjectInfo
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api import xml as x
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response, xml_response

SINGLE_VALUED = (
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "marker",
    "encoding-type",
    "fetch-owner",
)
MAX_KEYS = 1000


def _max_keys(call: Call) -> int:
    text = call.req.q("max-keys")
    if text is None:
        return MAX_KEYS
    try:
        value = int(text)
    except ValueError:
        raise errors.InvalidArgument("Provided max-keys not an integer or within integer range") from None
    if value < 0:
        raise errors.InvalidArgument("max-keys must not be negative")
    return min(value, MAX_KEYS)


def encode_token(cursor: str) -> str:
    return base64.b64encode(cursor.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise errors.InvalidArgument("The continuation token provided is incorrect") from None


def _contents(info: ObjectInfo, enc: bool, owner: bool) -> str:
    parts = [
        x.el("Key", _enc(info.key, enc)),
        x.el("LastModified", x.iso8601(info.last_modified)),
        x.el("ETag", info.etag),
        x.el("Size", info.size),
        x.el("StorageClass", "STANDARD"),
    ]
    if owner:
        parts.append(x.raw("Owner", x.el("ID", "dgp") + x.el("DisplayName", "deltaglider")))
    return x.raw("Contents", parts)


def _enc(value: str, enc: bool) -> str:
    return quote(value, safe="/") if enc else value


async def list_objects(call: Call) -> Response:
    req = call.req
    for name in SINGLE_VALUED:
        if len(req.query.get(name, [])) > 1:
            raise errors.InvalidArgument(f"Duplicate query parameter {name}")
    encoding = req.q("encoding-type")
    if encoding is not None and encoding != "url":
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
    enc = encoding == "url"
    v2 = req.q("list-type") == "2"
    prefix = req.q("prefix") or ""
    delimiter = req.q("delimiter") or ""
    max_keys = _max_keys(call)
    token = req.q("continuation-token")
    if v2:
        cursor = decode_token(token) if token is not None else req.q("start-after") or ""
    else:
        cursor = req.q("marker") or ""
    page = await call.services.engine.list(call.bucket, prefix, delimiter or None, cursor, max_keys)
    objects, common_prefixes = page.objects, page.common_prefixes
    if call.public_prefixes is not None:
        # Anonymous listing: only what the public prefixes expose (storage.md §10.5).
        public = call.services.public
        objects = [o for o in objects if public.admits_object(call.bucket, o.key)]
        common_prefixes = [p for p in common_prefixes if public.shows_prefix(call.bucket, p)]
    owner = (not v2) or req.q("fetch-owner") == "true"
    head = [x.el("Name", call.bucket), x.el("Prefix", _enc(prefix, enc))]
    if v2:
        if delimiter:
            head.append(x.el("Delimiter", _enc(delimiter, enc)))
        if enc:
            head.append(x.el("EncodingType", "url"))
        head.append(x.el("MaxKeys", max_keys))
        head.append(x.el("KeyCount", len(objects) + len(common_prefixes)))
        head.append(x.el("IsTruncated", page.is_truncated))
        if token is not None:
            head.append(x.el("ContinuationToken", token))
        if page.is_truncated and page.next_cursor is not None:
            head.append(x.el("NextContinuationToken", encode_token(page.next_cursor)))
        if req.q("start-after") is not None:
            head.append(x.el("StartAfter", _enc(req.q("start-after") or "", enc)))
    else:
        head.append(x.el("Marker", _enc(cursor, enc)))
        if delimiter:
            head.append(x.el("Delimiter", _enc(delimiter, enc)))
        if enc:
            head.append(x.el("EncodingType", "url"))
        head.append(x.el("MaxKeys", max_keys))
        head.append(x.el("IsTruncated", page.is_truncated))
        if page.is_truncated and page.next_cursor is not None:
            # Only S3 sends NextMarker with a delimiter; sending it always helps v1 clients page.
            head.append(x.el("NextMarker", _enc(page.next_cursor, enc)))
    contents = [_contents(info, enc, owner) for info in objects]
    prefixes = [x.raw("CommonPrefixes", x.el("Prefix", _enc(p, enc))) for p in common_prefixes]
    return xml_response(x.document("ListBucketResult", head + contents + prefixes))
