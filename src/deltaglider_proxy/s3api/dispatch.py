"""(method, bucket?, key?, sub-resource) → the one operation that handles it.

Sub-resources S3 defines but this proxy does not implement get ``501 NotImplemented`` after
the bucket/object existence check — they never fall through to another operation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response
from deltaglider_proxy.s3api.operations import buckets, layout, listing, multipart, objects

Operation = Callable[[Call], Awaitable[Response]]

# Every sub-resource name S3 uses in a query string; anything else (list-type, prefix, x-id...)
# is an ordinary parameter.
SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "attributes",
        "cors",
        "delete",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "legal-hold",
        "lifecycle",
        "location",
        "logging",
        "metadataConfiguration",
        "metadataTable",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "partNumber",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "renameObject",
        "replication",
        "requestPayment",
        "restore",
        "retention",
        "select",
        "session",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)

MESSAGES = {
    "acl": "ACLs are not supported by this proxy; use IAM policies instead",
    "tagging": "Tagging is not supported by this proxy",
    "versioning": "Bucket versioning is not supported by this proxy",
    "versions": "Object versions are not supported by this proxy",
    "versionId": "Object versions are not supported by this proxy",
}


def _not_implemented(sub: str, *, check_object: bool) -> Operation:
    async def reject(call: Call) -> Response:
        await buckets.require_bucket(call)
        if check_object:
            await objects.head_object(call)
        raise errors.NotImplementedOp(
            MESSAGES.get(sub, f"The '{sub}' sub-resource is not implemented by this proxy")
        )

    return reject


async def _method_not_allowed(call: Call) -> Response:
    raise errors.MethodNotAllowed()


# Layout mode (x-deltaglider-layout: raw) swaps these for their stored-object forms; every
# other operation is the same in both modes.
LAYOUT_OPERATIONS: dict[Operation, Operation] = {
    objects.get_object: layout.layout_get_object,
    objects.head_object: layout.layout_head_object,
    objects.put_object: layout.layout_put_object,
    objects.delete_object: layout.layout_delete_object,
    objects.delete_objects: layout.layout_delete_objects,
    objects.copy_object: layout.layout_copy_object,
    multipart.upload_part_copy: layout.layout_upload_part_copy,
    multipart.create_multipart_upload: layout.layout_create_multipart_upload,
    multipart.complete_multipart_upload: layout.layout_complete_multipart_upload,
    listing.list_objects: layout.layout_list_objects,
}


def resolve(call: Call) -> Operation:
    operation = _resolve(call)
    if layout.wants_layout(call):
        return LAYOUT_OPERATIONS.get(operation, operation)
    return operation


def _resolve(call: Call) -> Operation:
    req = call.req
    method = req.method
    subs = [name for name in req.query if name in SUBRESOURCES]
    sub = subs[0] if subs else None
    if req.bucket is None:
        if method == "GET":
            return buckets.list_buckets
        if method == "HEAD":
            return buckets.probe
        return _method_not_allowed
    if req.key is None:
        return _bucket_operation(method, sub, subs)
    return _object_operation(call, method, sub, subs)


def _bucket_operation(method: str, sub: str | None, subs: list[str]) -> Operation:
    if method == "GET":
        if sub is None:
            return listing.list_objects
        table: dict[str, Operation] = {
            "location": buckets.get_bucket_location,
            "versioning": buckets.get_bucket_versioning,
            "acl": buckets.get_bucket_acl,
            "uploads": multipart.list_multipart_uploads,
        }
        return table.get(sub) or _not_implemented(sub, check_object=False)
    if method == "HEAD":
        return buckets.head_bucket
    if method == "PUT":
        return buckets.create_bucket if sub is None else _not_implemented(sub, check_object=False)
    if method == "DELETE":
        return buckets.delete_bucket if sub is None else _not_implemented(sub, check_object=False)
    if method == "POST":
        if sub == "delete":
            return objects.delete_objects
        if sub is None:
            return _invalid_post
        return _not_implemented(sub, check_object=False)
    return _method_not_allowed


async def _invalid_post(call: Call) -> Response:
    content_type = call.req.header("content-type") or ""
    if content_type.startswith("multipart/form-data"):
        raise errors.NotImplementedOp("Browser POST uploads are not supported by this proxy")
    raise errors.InvalidRequest("POST requires ?delete query parameter")


def _object_operation(call: Call, method: str, sub: str | None, subs: list[str]) -> Operation:
    has_copy = call.req.header("x-amz-copy-source") is not None
    if method in ("GET", "HEAD"):
        if sub is None or (sub == "partNumber" and len(subs) == 1):
            return objects.get_object if method == "GET" else objects.head_object
        if sub == "versionId" and call.req.q("versionId") == "null" and len(subs) == 1:
            return objects.get_object if method == "GET" else objects.head_object
        if method == "GET" and sub == "uploadId" and len(subs) == 1:
            return multipart.list_parts
        if method == "GET" and sub == "acl":
            return objects.get_object_acl
        return _not_implemented(sub, check_object=True)
    if method == "PUT":
        if set(subs) == {"partNumber", "uploadId"}:
            return multipart.upload_part_copy if has_copy else multipart.upload_part
        if sub is None:
            return objects.copy_object if has_copy else objects.put_object
        return _not_implemented(sub, check_object=True)
    if method == "DELETE":
        if sub == "uploadId" and len(subs) == 1:
            return multipart.abort_multipart_upload
        if sub is None or (sub == "versionId" and call.req.q("versionId") == "null"):
            return objects.delete_object
        return _not_implemented(sub, check_object=True)
    if method == "POST":
        if sub == "uploads" and len(subs) == 1:
            return multipart.create_multipart_upload
        if sub == "uploadId" and len(subs) == 1:
            return multipart.complete_multipart_upload
        if sub is None:
            return _method_not_allowed
        return _not_implemented(sub, check_object=sub not in ("select",))
    return _method_not_allowed
