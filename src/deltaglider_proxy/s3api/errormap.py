"""Domain errors from the engine and the store, mapped once to the S3 vocabulary."""

from __future__ import annotations

import logging

from deltaglider_proxy.engine.codec import CodecBusy, CodecFailed
from deltaglider_proxy.engine.keys import KeyError_
from deltaglider_proxy.engine.layout import LayoutRecordMissing
from deltaglider_proxy.engine.multipart import (
    LayoutMismatch,
    PartProblem,
    TooManyUploads,
    UploadBusy,
    UploadNotFound,
)
from deltaglider_proxy.engine.objects import EntityTooLarge, ObjectMissing
from deltaglider_proxy.engine.retrieve import IntegrityError, SpoolExhausted
from deltaglider_proxy.engine.spool import SpoolFull
from deltaglider_proxy.policy.quotas import BucketFrozen, QuotaExceeded
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.storage import base as storage
from deltaglider_proxy.storage.metadata import MetadataError

log = logging.getLogger(__name__)


def to_s3_error(exc: BaseException) -> errors.S3Error:
    """The S3 error a client sees for ``exc``; unknown failures are logged and become InternalError."""
    if isinstance(exc, errors.S3Error):
        return exc
    if isinstance(exc, KeyError_):
        return errors.S3Error(exc.kind, 400, str(exc))
    if isinstance(exc, ObjectMissing | storage.ObjectNotFound):
        return errors.NoSuchKey(resource=str(exc))
    if isinstance(exc, storage.BucketNotFound):
        return errors.NoSuchBucket(resource=str(exc))
    if isinstance(exc, BucketFrozen | QuotaExceeded):
        # storage.md §10.7 [Decision]: 403 AccessDenied with upstream's message, never a 500.
        return errors.AccessDenied(str(exc))
    if isinstance(exc, storage.BucketNotEmpty):
        return errors.BucketNotEmpty()
    if isinstance(exc, storage.BucketAlreadyExists):
        return errors.BucketAlreadyExists()
    if isinstance(exc, UploadNotFound):
        return errors.NoSuchUpload(resource=str(exc))
    if isinstance(exc, UploadBusy | LayoutMismatch):
        return errors.InvalidRequest(str(exc))
    if isinstance(exc, LayoutRecordMissing):
        return errors.InvalidArgument(str(exc))
    if isinstance(exc, storage.ObjectExists):
        # A create-only write (If-None-Match: *) found the object already there.
        return errors.PreconditionFailed()
    if isinstance(exc, PartProblem):
        return errors.S3Error(exc.code, 413 if exc.code == "EntityTooLarge" else 400, str(exc))
    if isinstance(exc, TooManyUploads):
        return errors.SlowDown("Too many multipart uploads in progress")
    if isinstance(exc, EntityTooLarge):
        return errors.EntityTooLarge()
    if isinstance(exc, storage.InvalidObjectName):
        return errors.InvalidArgument("The object key cannot be stored")
    if isinstance(exc, CodecBusy):
        return errors.SlowDown("All delta codec slots are busy; retry later.")
    if isinstance(exc, SpoolFull | SpoolExhausted):
        return errors.SlowDown("The server's spool space is exhausted; retry later.")
    if isinstance(exc, storage.BackendUnavailable):
        log.error("backend unavailable: %s", exc)
        return errors.ServiceUnavailable("The storage backend is unavailable; retry later.")
    if isinstance(exc, storage.DiskFull):
        log.error("disk full: %s", exc)
        return errors.InternalError("Insufficient storage space. The server's disk is full.")
    if isinstance(exc, CodecFailed):
        log.error("delta codec failed: %s", exc)
        return errors.InternalError()
    if isinstance(exc, IntegrityError | MetadataError):
        log.error("integrity failure: %s", exc)
        return errors.InternalError()
    log.error("internal error: %r", exc, exc_info=exc)
    return errors.InternalError()
