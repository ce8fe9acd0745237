"""Bucket operations (storage.md §8)."""

from __future__ import annotations

from deltaglider_proxy.engine.keys import KeyError_, check_bucket_name
from deltaglider_proxy.s3api import authorize, errors
from deltaglider_proxy.s3api import xml as x
from deltaglider_proxy.s3api.context import Call
from deltaglider_proxy.s3api.http import Response, xml_response

OWNER = x.el("ID", "deltaglider_proxy") + x.el("DisplayName", "DeltaGlider Proxy")
REGION = "us-east-1"


async def require_bucket(call: Call) -> None:
    if not await call.services.engine.bucket_exists(call.bucket):
        raise errors.NoSuchBucket(resource=call.bucket)


async def list_buckets(call: Call) -> Response:
    buckets = [b for b in await call.services.engine.list_buckets() if authorize.shows_bucket(call, b.name)]
    entries = [
        x.raw("Bucket", x.el("Name", b.name) + x.el("CreationDate", x.iso8601(b.created))) for b in buckets
    ]
    return xml_response(
        x.document("ListAllMyBucketsResult", [x.raw("Owner", OWNER), x.raw("Buckets", entries)])
    )


async def probe(call: Call) -> Response:
    return Response(status=200)


async def create_bucket(call: Call) -> Response:
    try:
        check_bucket_name(call.bucket, creating=True)
    except KeyError_ as exc:
        raise errors.InvalidBucketName(str(exc)) from None
    # Re-creating an existing bucket succeeds, as S3 does for its owner in us-east-1.
    await call.services.engine.create_bucket(call.bucket)
    return Response(status=200, headers=[("location", f"/{call.bucket}")])


async def head_bucket(call: Call) -> Response:
    await require_bucket(call)
    return Response(status=200, headers=[("x-amz-bucket-region", REGION)])


async def delete_bucket(call: Call) -> Response:
    await require_bucket(call)
    call.services.quotas.check_mutation(call.bucket)
    open_uploads = call.services.multipart.open_count(call.bucket)
    if open_uploads:
        raise errors.BucketNotEmpty(
            f"The bucket you tried to delete is not empty ({open_uploads} multipart upload(s) in progress; "
            "abort them first)."
        )
    if not await call.services.engine.is_empty(call.bucket):
        raise errors.BucketNotEmpty()
    await call.services.engine.delete_bucket(call.bucket)
    return Response(status=204)


async def get_bucket_location(call: Call) -> Response:
    await require_bucket(call)
    body = f'{x.XML_DECLARATION}<LocationConstraint xmlns="{x.S3_NS}">{REGION}</LocationConstraint>'
    return xml_response(body.encode())


async def get_bucket_versioning(call: Call) -> Response:
    await require_bucket(call)
    return xml_response(x.document("VersioningConfiguration", ""))


def canned_acl() -> bytes:
    owner = x.el("ID", "dgp") + x.el("DisplayName", "deltaglider")
    grant = x.raw(
        "Grant",
        '<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
        + owner
        + "</Grantee>"
        + x.el("Permission", "FULL_CONTROL"),
    )
    return x.document("AccessControlPolicy", x.raw("Owner", owner) + x.raw("AccessControlList", grant))


async def get_bucket_acl(call: Call) -> Response:
    await require_bucket(call)
    return xml_response(canned_acl())
