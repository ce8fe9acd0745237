"""Bucket-name and object-key rules (storage.md §1.1) and the key → deltaspace split."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, REFERENCE_NAME

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


class KeyError_(ValueError):
    """A key or bucket name that breaks the rules; ``kind`` picks the S3 error code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def bucket_name_valid(name: str) -> bool:
    return bool(_BUCKET_RE.match(name)) and ".." not in name


def check_bucket_name(name: str, *, creating: bool = False) -> None:
    if not bucket_name_valid(name):
        raise KeyError_("InvalidBucketName", "The specified bucket is not valid.")
    if creating and _IPV4_RE.match(name):
        raise KeyError_("InvalidBucketName", "Bucket names must not be formatted as an IP address.")


@dataclass(frozen=True)
class ObjectKey:
    """A validated user key and its deltaspace split at the last ``/``."""

    key: str
    prefix: str
    filename: str

    @property
    def passthrough_name(self) -> str:
        return self.key

    @property
    def delta_name(self) -> str:
        return self.key + DELTA_SUFFIX

    @property
    def reference_name(self) -> str:
        return f"{self.prefix}/{REFERENCE_NAME}" if self.prefix else REFERENCE_NAME


def _segments_ok(text: str) -> None:
    if "\x00" in text:
        raise KeyError_("InvalidArgument", "Object key must not contain NUL bytes")
    if any(segment in (".", "..") for segment in text.split("/")):
        raise KeyError_("InvalidArgument", "Key must not contain '.' or '..' path segments")


def parse_key(raw: str) -> ObjectKey:
    """Validate a user key (any leading ``/`` removed) and split it into prefix and filename."""
    key = raw.lstrip("/")
    if not key:
        raise KeyError_("InvalidArgument", "Object key must not be empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise KeyError_("KeyTooLongError", "Your key is too long")
    _segments_ok(key)
    prefix, _, filename = key.rpartition("/")
    if filename == REFERENCE_NAME:
        raise KeyError_("InvalidArgument", "'reference.bin' is reserved for delta baselines")
    if filename.endswith(DELTA_SUFFIX):
        raise KeyError_("InvalidArgument", "Object names ending in '.delta' are reserved")
    return ObjectKey(key=key, prefix=prefix, filename=filename)


def check_layout_name(name: str) -> str:
    """Validate a backend object name addressed verbatim (layout access): the reserved names
    ``reference.bin`` and ``*.delta`` are allowed, but not what could escape the bucket. The
    delta of a longest user key is ``.delta`` longer than a key may be, so its name is allowed."""
    if not name:
        raise KeyError_("InvalidArgument", "Object key must not be empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES + len(DELTA_SUFFIX):
        raise KeyError_("KeyTooLongError", "Your key is too long")
    _segments_ok(name)
    return name


def check_list_prefix(prefix: str) -> None:
    if prefix:
        _segments_ok(prefix)
