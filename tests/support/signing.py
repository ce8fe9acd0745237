"""Independent client-side signing helpers for raw-HTTP tests (botocore's signer + the documented
aws-chunked algorithm), so tests do not reuse the server's own code."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from unittest import mock

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.server import ACCESS_KEY, SECRET_KEY

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


class _StreamingSigV4Auth(S3SigV4Auth):
    """botocore's signer, told that the payload is aws-chunked (it would otherwise hash the body)."""

    def payload(self, request: AWSRequest) -> str:
        return STREAMING_PAYLOAD


@contextmanager
def signing_time(when: datetime | None) -> Iterator[None]:
    """Make botocore sign as if the clock said ``when``."""
    if when is None:
        yield
        return
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        yield


def signed_headers(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    when: datetime | None = None,
) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    with signing_time(when):
        S3SigV4Auth(Credentials(access_key, secret_key), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def presigned_url(method: str, url: str, expires: int = 3600, when: datetime | None = None) -> str:
    request = AWSRequest(method=method, url=url)
    signer = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1", expires=expires)
    with signing_time(when):
        signer.add_auth(request)
    return str(request.url)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(date: str, secret: str = SECRET_KEY) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, "us-east-1")
    key = _hmac(key, "s3")
    return _hmac(key, "aws4_request")


def signed_chunked_upload(
    url: str, payload: bytes, chunk_size: int = 64 * 1024, *, corrupt_chunk: int | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD upload (AWS's documented scheme)."""
    chunks = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)] + [b""]
    encoded_length = sum(len(f"{len(c):x};chunk-signature=".encode()) + 64 + 2 + len(c) + 2 for c in chunks)
    headers = {
        "x-amz-content-sha256": STREAMING_PAYLOAD,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload)),
        "content-length": str(encoded_length),
    }
    request = AWSRequest(method="PUT", url=url, headers=headers)
    _StreamingSigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    final = dict(request.headers.items())
    auth = final["Authorization"]
    previous = auth.rsplit("Signature=", 1)[1]
    amz_date = final["X-Amz-Date"]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    key = signing_key(amz_date[:8])
    body = bytearray()
    for index, chunk in enumerate(chunks):
        string_to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                amz_date,
                scope,
                previous,
                EMPTY_SHA256,
                hashlib.sha256(chunk).hexdigest(),
            ]
        )
        signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        previous = signature
        if corrupt_chunk == index:
            signature = "0" * 64
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk + b"\r\n"
    return final, bytes(body)
