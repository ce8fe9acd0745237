"""ListObjects v1 and v2 (storage.md §4)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar
from urllib.parse import quote

from deltaglider_proxy.s3api import authorize, errors
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
L = TypeVar("L", bound="Listed")


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


class Listed(Protocol):
    """What a listing shows of one object (a logical ObjectInfo or a stored LayoutObject)."""

    @property
    def key(self) -> str: ...
    @property
    def etag(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def last_modified(self) -> datetime: ...


@dataclass(frozen=True)
class ListRequest:
    v2: bool
    prefix: str
    delimiter: str
    max_keys: int
    cursor: str  # entries strictly after it are listed
    token: str | None
    start_after: str | None
    encode: bool  # encoding-type=url
    owner: bool


def _contents(info: Listed, enc: bool, owner: bool) -> str:
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


def parse_list_request(call: Call) -> ListRequest:
    req = call.req
    for name in SINGLE_VALUED:
        if len(req.query.get(name, [])) > 1:
            raise errors.InvalidArgument(f"Duplicate query parameter {name}")
    encoding = req.q("encoding-type")
    if encoding is not None and encoding != "url":
        raise errors.InvalidArgument("Invalid Encoding Method specified in Request")
    v2 = req.q("list-type") == "2"
    token = req.q("continuation-token")
    if v2:
        cursor = decode_token(token) if token is not None else req.q("start-after") or ""
    else:
        cursor = req.q("marker") or ""
    return ListRequest(
        v2=v2,
        prefix=req.q("prefix") or "",
        delimiter=req.q("delimiter") or "",
        max_keys=_max_keys(call),
        cursor=cursor,
        token=token,
        start_after=req.q("start-after"),
        encode=encoding == "url",
        owner=(not v2) or req.q("fetch-owner") == "true",
    )


def visible(call: Call, objects: Sequence[L], common_prefixes: Sequence[str]) -> tuple[list[L], list[str]]:
    """What the caller may see: for an anonymous listing only what the public prefixes expose
    (storage.md §10.5)."""
    if call.public_prefixes is None:
        if call.list_filtered:
            return (
                [o for o in objects if authorize.shows_key(call, o.key)],
                [p for p in common_prefixes if authorize.shows_prefix(call, p)],
            )
        return list(objects), list(common_prefixes)
    public = call.services.public
    return (
        [o for o in objects if public.admits_object(call.bucket, o.key)],
        [p for p in common_prefixes if public.shows_prefix(call.bucket, p)],
    )


def render_listing(
    call: Call,
    request: ListRequest,
    objects: Sequence[Listed],
    common_prefixes: Sequence[str],
    is_truncated: bool,
    next_cursor: str | None,
) -> Response:
    enc = request.encode
    head = [x.el("Name", call.bucket), x.el("Prefix", _enc(request.prefix, enc))]
    if request.v2:
        if request.delimiter:
            head.append(x.el("Delimiter", _enc(request.delimiter, enc)))
        if enc:
            head.append(x.el("EncodingType", "url"))
        head.append(x.el("MaxKeys", request.max_keys))
        head.append(x.el("KeyCount", len(objects) + len(common_prefixes)))
        head.append(x.el("IsTruncated", is_truncated))
        if request.token is not None:
            head.append(x.el("ContinuationToken", request.token))
        if is_truncated and next_cursor is not None:
            head.append(x.el("NextContinuationToken", encode_token(next_cursor)))
        if request.start_after is not None:
            head.append(x.el("StartAfter", _enc(request.start_after, enc)))
    else:
        head.append(x.el("Marker", _enc(request.cursor, enc)))
        if request.delimiter:
            head.append(x.el("Delimiter", _enc(request.delimiter, enc)))
        if enc:
            head.append(x.el("EncodingType", "url"))
        head.append(x.el("MaxKeys", request.max_keys))
        head.append(x.el("IsTruncated", is_truncated))
        if is_truncated and next_cursor is not None:
            # Only S3 sends NextMarker with a delimiter; sending it always helps v1 clients page.
            head.append(x.el("NextMarker", _enc(next_cursor, enc)))
    contents = [_contents(info, enc, request.owner) for info in objects]
    prefixes = [x.raw("CommonPrefixes", x.el("Prefix", _enc(p, enc))) for p in common_prefixes]
    response = xml_response(x.document("ListBucketResult", head + contents + prefixes))
    if call.list_filtered:
        response.headers.append(authorize.LIST_FILTERED_HEADER)
    return response


async def list_objects(call: Call) -> Response:
    request = parse_list_request(call)
    page = await call.services.engine.list(
        call.bucket, request.prefix, request.delimiter or None, request.cursor, request.max_keys
    )
    objects, common_prefixes = visible(call, page.objects, page.common_prefixes)
    return render_listing(call, request, objects, common_prefixes, page.is_truncated, page.next_cursor)
