"""Request bodies: streamed to the spool while aws-chunked framing, chunk signatures, Content-MD5,
the signed payload hash and flexible checksums are verified. A body that fails any check leaves
nothing behind."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from deltaglider_proxy.engine.spool import Spool, SpooledFile, SpoolFull, SpoolOverrun
from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api.checksums import new_checksum, requested_checksum
from deltaglider_proxy.s3api.chunked import AwsChunkedDecoder, ChunkSigner
from deltaglider_proxy.s3api.http import S3Request
from deltaglider_proxy.s3api.sigv4 import AuthContext
from deltaglider_proxy.storage.base import SealedBody

UNSIGNED = "UNSIGNED-PAYLOAD"
SIGNED_STREAMING = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
UNSIGNED_STREAMING = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# S3's ceiling for a single PUT; larger objects go multipart.
MAX_SINGLE_PUT = 5 * 1024**3


class ClientDisconnected(Exception):
    """The client went away before the body was complete."""


def _content_md5(req: S3Request) -> bytes | None:
    text = req.header("content-md5")
    if text is None:
        return None
    try:
        digest = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidDigest() from None
    if len(digest) != 16:
        raise errors.InvalidDigest()
    return digest


def _int_header(req: S3Request, name: str) -> int | None:
    text = req.header(name)
    if text is None:
        return None
    if not text.strip().isdigit():
        raise errors.InvalidArgument(f"{name} must be a non-negative integer")
    return int(text)


async def read_small(req: S3Request, limit: int) -> bytes:
    """A small request body (XML documents); larger than ``limit`` is refused."""
    length = _int_header(req, "content-length")
    if length is not None and length > limit:
        raise errors.MalformedXML("The XML you provided was too large.")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await req.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.MalformedXML("The XML you provided was too large.")
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    data = b"".join(parts)
    expected_md5 = _content_md5(req)
    if expected_md5 is not None:
        import hashlib

        if hashlib.md5(data, usedforsecurity=False).digest() != expected_md5:
            raise errors.BadDigest()
    return data


async def spool_body(
    req: S3Request,
    spool: Spool,
    auth: AuthContext | None,
    max_size: int,
    sealing: Callable[[int | None], SealedBody | None] | None = None,
) -> SpooledFile:
    """Stream the request body into a verified spool file (caller owns the result).

    ``sealing`` is asked, with the declared body length, where to seal the body as it arrives
    instead of spooling its plaintext (see ``ObjectEngine.sealing_writer``).
    """
    payload = req.header("x-amz-content-sha256") or UNSIGNED
    streaming = payload.startswith("STREAMING-")
    if streaming and payload not in SIGNED_STREAMING and payload != UNSIGNED_STREAMING:
        raise errors.InvalidArgument(f"Unsupported x-amz-content-sha256 value {payload!r}")
    if payload in SIGNED_STREAMING and auth is None:
        raise errors.AccessDenied("Signed streaming payloads require a signed request")
    content_length = _int_header(req, "content-length")
    chunked_transfer = "chunked" in (req.header("transfer-encoding") or "").lower()
    if content_length is None and not chunked_transfer:
        raise errors.MissingContentLength()
    declared = _int_header(req, "x-amz-decoded-content-length") if streaming else content_length
    if streaming and declared is None and not chunked_transfer:
        raise errors.MissingContentLength("x-amz-decoded-content-length is required for aws-chunked bodies")
    limit = min(max_size, MAX_SINGLE_PUT)
    if declared is not None and declared > limit:
        raise errors.EntityTooLarge()
    expected_md5 = _content_md5(req)
    checksum_request = requested_checksum(req.headers)
    extra = []
    if checksum_request is not None:
        extra.append((checksum_request[0], new_checksum(checksum_request[0])))
    decoder = (
        AwsChunkedDecoder(
            signer=ChunkSigner(auth) if payload in SIGNED_STREAMING and auth is not None else None,
            expect_trailer=payload.endswith("TRAILER"),
        )
        if streaming
        else None
    )
    sealed = sealing(declared) if sealing is not None else None
    try:
        writer = spool.writer(declared, extra, sealed)
    except SpoolFull:
        raise errors.SlowDown("The server's spool space is exhausted; retry later.") from None
    try:
        received = 0
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if content_length is not None and received > content_length:
                raise errors.InvalidArgument("The request body is longer than its Content-Length")
            if decoder is not None:
                for piece in decoder.feed(chunk):
                    await writer.write(piece)
            else:
                await writer.write(chunk)
            if writer.size > limit:
                raise errors.EntityTooLarge()
            if not message.get("more_body", False):
                break
        if content_length is not None and received != content_length:
            raise errors.IncompleteBody()
        trailers = decoder.finish() if decoder is not None else {}
        if declared is not None and writer.size != declared:
            raise errors.IncompleteBody("The decoded body length does not match x-amz-decoded-content-length")
        body = await writer.finish()
    except SpoolOverrun:
        writer.abort()
        raise errors.IncompleteBody(
            "The decoded body length does not match x-amz-decoded-content-length"
        ) from None
    except BaseException:
        writer.abort()
        raise
    try:
        _verify(body, payload, expected_md5, checksum_request, trailers)
    except BaseException:
        body.discard()
        raise
    return body


def _verify(
    body: SpooledFile,
    payload: str,
    expected_md5: bytes | None,
    checksum_request: tuple[str, str | None] | None,
    trailers: dict[str, str],
) -> None:
    if expected_md5 is not None and bytes.fromhex(body.md5_hex) != expected_md5:
        raise errors.BadDigest()
    if len(payload) == 64 and not hmac.compare_digest(payload.lower(), body.sha256_hex):
        raise errors.BadDigest("The x-amz-content-sha256 you specified did not match what we received.")
    if checksum_request is None:
        return
    algorithm, value = checksum_request
    if value is None:
        value = trailers.get(f"x-amz-checksum-{algorithm.lower()}")
    if value is None:
        # Declared but never sent: nothing to verify, nothing to store.
        body.checksums.pop(algorithm, None)
        return
    if not hmac.compare_digest(value.strip(), body.checksums.get(algorithm, "")):
        raise errors.BadDigest(f"The {algorithm} you specified did not match the calculated checksum.")
