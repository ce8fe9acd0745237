"""S3 client failures mapped to the store's own errors, logged once (storage.md §9.2, §10.2).

Every backend error is logged at warning with what an operator needs to chase it with the
provider: operation, bucket, key, HTTP status, the backend's code and message and its
``x-amz-request-id``. Outcomes a caller expects and handles (a HEAD that finds nothing, a
create-only write that loses) are not errors and are classified by the helpers below instead.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from deltaglider_proxy.storage.base import (
    BackendUnavailable,
    BucketAlreadyExists,
    BucketNotEmpty,
    BucketNotFound,
    ObjectNotFound,
    StorageError,
)

_log = logging.getLogger(__name__)

# Failures below HTTP: the request never got an answer (refused, reset, timed out).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    BotoConnectionError,
    HTTPClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)
# Everything an S3 call raises that is about the call (programming errors stay themselves).
CLIENT_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError, *CONNECTION_ERRORS)

# Operations on a bucket rather than a key: a bare 404 there means the bucket is missing.
_BUCKET_OPERATIONS = frozenset({"HeadBucket", "DeleteBucket", "CreateBucket", "ListObjectsV2"})
# MinIO, Ceph and Hetzner answer 403 instead of NoSuchBucket on these (storage.md §9.2).
_HIDDEN_BUCKET_OPERATIONS = frozenset({"ListObjectsV2", "CreateBucket"})
_THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"})
_NOT_FOUND = frozenset({"404", "NotFound", "NoSuchKey"})
# 400s that say something about the request itself: sending it again cannot help.
_PERMANENT_400 = frozenset(
    {
        "EntityTooLarge",
        "EntityTooSmall",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidDigest",
        "KeyTooLongError",
        "MetadataTooLarge",
    }
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def request_id(exc: BaseException) -> str:
    if not isinstance(exc, ClientError):
        return ""
    meta = exc.response.get("ResponseMetadata", {})
    headers = meta.get("HTTPHeaders", {})
    return str(meta.get("RequestId") or headers.get("x-amz-request-id", ""))


def is_not_found(exc: BaseException) -> bool:
    """A HEAD/GET that found no object (or, without a body to tell, no bucket)."""
    code = error_code(exc)
    return code in _NOT_FOUND or (http_status(exc) == 404 and code != "NoSuchBucket")


def is_precondition_failed(exc: BaseException) -> bool:
    """A create-only write (``If-None-Match: *``) found the object there, or lost a race for it."""
    return http_status(exc) == 412 or error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")


def is_not_implemented(exc: BaseException) -> bool:
    return http_status(exc) == 501 or error_code(exc) == "NotImplemented"


def is_transient_write_error(exc: BaseException) -> bool:
    """Worth sending a PutObject/UploadPart again (storage.md §10.2): it failed at dispatch, or
    the backend answered 503, or a 400 (Hetzner emits transient 400s) that is not about the
    request itself."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    status = http_status(exc)
    return status == 503 or (status == 400 and error_code(exc) not in _PERMANENT_400)


def to_storage_error(exc: BaseException, operation: str, bucket: str, key: str | None = None) -> StorageError:
    """The store's error for a failed S3 call; logs it with the backend's details."""
    code, status, rid = error_code(exc), http_status(exc), request_id(exc)
    message = ""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))
    else:
        message = f"{type(exc).__name__}: {exc}"
    _log.warning(
        "S3 %s failed: bucket=%s key=%s status=%s code=%s message=%s request_id=%s",
        operation,
        bucket,
        key if key is not None else "-",
        status if status is not None else "-",
        code or "-",
        message or "-",
        rid or "-",
    )
    detail = f"S3 {operation} on {bucket}/{key or ''} failed: HTTP {status} {code} {message}".strip()
    if rid:
        detail += f" (request id {rid})"
    if isinstance(exc, CONNECTION_ERRORS):
        return BackendUnavailable(f"S3 {operation} on {bucket}: backend unreachable: {message}")
    if code == "NoSuchBucket" or (status == 403 and operation in _HIDDEN_BUCKET_OPERATIONS):
        return BucketNotFound(bucket)
    if status == 404 and operation in _BUCKET_OPERATIONS:
        return BucketNotFound(bucket)
    if code in _NOT_FOUND or status == 404:
        return ObjectNotFound(key or "")
    if code == "BucketNotEmpty":
        return BucketNotEmpty(bucket)
    if code == "BucketAlreadyExists":
        return BucketAlreadyExists(bucket)
    if status == 503 or code in _THROTTLING:
        return BackendUnavailable(detail)
    return StorageError(detail)
