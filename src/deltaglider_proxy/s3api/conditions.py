"""Conditional requests and byte ranges (storage.md §3.6, §3.7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime

from deltaglider_proxy.s3api import errors

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def http_date(value: datetime) -> str:
    return format_datetime(value.replace(microsecond=0), usegmt=True)


def parse_http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _tags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def _matches(header: str, etag: str) -> bool:
    bare = etag.strip('"')
    return any(tag == "*" or tag == bare for tag in _tags(header))


def _seconds(value: datetime) -> datetime:
    # HTTP dates have whole seconds; compare Last-Modified as the client saw it.
    return value.replace(microsecond=0)


def check_read(headers: Mapping[str, str], etag: str, last_modified: datetime) -> int | None:
    """GET/HEAD preconditions: None to proceed, else 412 or 304 (first failure wins)."""
    if_match = headers.get("if-match")
    if if_match is not None and not _matches(if_match, etag):
        return 412
    since = parse_http_date(headers.get("if-unmodified-since"))
    if if_match is None and since is not None and _seconds(last_modified) > since:
        return 412
    if_none = headers.get("if-none-match")
    if if_none is not None and _matches(if_none, etag):
        return 304
    modified = parse_http_date(headers.get("if-modified-since"))
    if if_none is None and modified is not None and _seconds(last_modified) <= modified:
        return 304
    return None


def check_write(headers: Mapping[str, str], current: tuple[str, datetime] | None) -> None:
    """PUT preconditions against the current object (None = absent); failures are 412."""
    if_match = headers.get("if-match")
    if if_match is not None:
        if current is None:
            raise errors.PreconditionFailed()
        if not _matches(if_match, current[0]):
            raise errors.PreconditionFailed()
    if_none = headers.get("if-none-match")
    if (
        if_none is not None
        and current is not None
        and (if_none.strip() == "*" or _matches(if_none, current[0]))
    ):
        raise errors.PreconditionFailed()
    since = parse_http_date(headers.get("if-unmodified-since"))
    if since is not None and current is not None and _seconds(current[1]) > since:
        raise errors.PreconditionFailed()


def check_copy_source(headers: Mapping[str, str], etag: str, last_modified: datetime) -> None:
    """x-amz-copy-source-if-* preconditions; failures are 412."""
    if_match = headers.get("x-amz-copy-source-if-match")
    if if_match is not None:
        if not _matches(if_match, etag):
            raise errors.PreconditionFailed()
    else:
        since = parse_http_date(headers.get("x-amz-copy-source-if-unmodified-since"))
        if since is not None and _seconds(last_modified) > since:
            raise errors.PreconditionFailed()
    if_none = headers.get("x-amz-copy-source-if-none-match")
    if if_none is not None:
        if _matches(if_none, etag):
            raise errors.PreconditionFailed()
    else:
        modified = parse_http_date(headers.get("x-amz-copy-source-if-modified-since"))
        if modified is not None and _seconds(last_modified) <= modified:
            raise errors.PreconditionFailed()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single byte range → inclusive (first, last); None = whole object.

    Syntax S3 ignores (multiple ranges, garbage) means the whole object; an unsatisfiable range
    raises InvalidRange (416).
    """
    if header is None:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise _unsatisfiable(size)
    return first, min(last, size - 1)


def _unsatisfiable(size: int) -> errors.S3Error:
    error = errors.InvalidRange()
    error.headers["content-range"] = f"bytes */{size}"
    return error
