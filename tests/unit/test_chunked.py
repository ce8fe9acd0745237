"""aws-chunked decoding: AWS's published vectors, botocore as a real producer, and framing errors."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import boto3
import pytest
from botocore import httpchecksum
from botocore.awsrequest import AWSPreparedRequest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaglider_proxy.s3api import checksums, errors, sigv4
from deltaglider_proxy.s3api.chunked import AwsChunkedDecoder, ChunkSigner
from deltaglider_proxy.s3api.sigv4 import AuthContext, SignedRequest

DOC_AKID = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_TIME = datetime(2013, 5, 24, tzinfo=UTC)
DOC_AUTH_PREFIX = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Keys:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def secret_for(self, access_key_id: str) -> str | None:
        return self.secrets.get(access_key_id)


def decode(
    body: bytes,
    *,
    signer: ChunkSigner | None = None,
    expect_trailer: bool = False,
    cuts: list[int] | None = None,
    max_chunk_size: int = 16 * 1024 * 1024,
) -> tuple[bytes, dict[str, str]]:
    """Feed ``body`` split at ``cuts`` and return (payload, trailers)."""
    decoder = AwsChunkedDecoder(signer=signer, expect_trailer=expect_trailer, max_chunk_size=max_chunk_size)
    bounds = sorted({0, len(body), *(c for c in (cuts or []) if c <= len(body))})
    out = bytearray()
    for start, end in itertools.pairwise(bounds):
        for piece in decoder.feed(body[start:end]):
            out += piece
    trailers = decoder.finish()
    assert decoder.decoded_length == len(out)
    return bytes(out), trailers


def error_code(call: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """The S3 error code ``call(*args, **kwargs)`` raises."""
    with pytest.raises(errors.S3Error) as info:
        call(*args, **kwargs)
    return info.value.code


# --- AWS's documented examples ----------------------------------------------------------------------
# PUT /examplebucket/chunkObject.txt, 66560 bytes of "a" sent as 65536 + 1024 + 0.
# sigv4-streaming.html (seed 4f232c…) and sigv4-streaming-trailers.html (seed 106e2a…, CRC32C trailer).

PAYLOAD = b"a" * 66560
DOC_CHUNKS = [65536, 1024, 0]
DOC_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
TRAILER_DOC_SIGNATURES = [
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
]
TRAILER_DOC_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def doc_auth(trailer: bool) -> AuthContext:
    """The documented request, verified by our SigV4 code: its seed signature starts the chain."""
    headers = {
        "host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
    }
    if trailer:
        headers |= {
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "x-amz-trailer": "x-amz-checksum-crc32c",
            "authorization": DOC_AUTH_PREFIX + "SignedHeaders=content-encoding;host;x-amz-content-sha256;"
            "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer,"
            "Signature=106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        }
    else:
        headers |= {
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "content-length": "66824",
            "authorization": DOC_AUTH_PREFIX + "SignedHeaders=content-encoding;content-length;host;"
            "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
            "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        }
    req = SignedRequest("PUT", "/examplebucket/chunkObject.txt", "", headers)
    return sigv4.verify(req, Keys({DOC_AKID: DOC_SECRET}), now=DOC_TIME)


def doc_body(signatures: list[str], trailer: bytes = b"") -> bytes:
    body = b""
    for size, signature in zip(DOC_CHUNKS, signatures, strict=True):
        body += f"{size:x};chunk-signature={signature}\r\n".encode() + b"a" * size
        if size:
            body += b"\r\n"
    return body + trailer + b"\r\n"


DOC_BODY = doc_body(DOC_SIGNATURES)
TRAILER_DOC_BODY = doc_body(
    TRAILER_DOC_SIGNATURES,
    b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:" + TRAILER_DOC_SIGNATURE.encode() + b"\r\n",
)


def test_documented_body_lengths() -> None:
    assert len(DOC_BODY) == 66824  # the Content-Length of the documented request
    assert len(TRAILER_DOC_BODY) == 66946


def test_signer_reproduces_documented_signatures() -> None:
    signer = ChunkSigner(doc_auth(trailer=False))
    for size, expected in zip(DOC_CHUNKS, DOC_SIGNATURES, strict=True):
        assert signer.chunk_signature(hashlib.sha256(b"a" * size).hexdigest()) == expected
        signer.verify_chunk(hashlib.sha256(b"a" * size).hexdigest(), expected)

    signer = ChunkSigner(doc_auth(trailer=True))
    for size, expected in zip(DOC_CHUNKS, TRAILER_DOC_SIGNATURES, strict=True):
        signer.verify_chunk(hashlib.sha256(b"a" * size).hexdigest(), expected)
    # The trailer is hashed as "name:value\n" (LF, not CRLF), which this documented vector pins down.
    assert signer.trailer_signature(b"x-amz-checksum-crc32c:sOO8/Q==\n") == TRAILER_DOC_SIGNATURE
    assert signer.trailer_signature(b"x-amz-checksum-crc32c:sOO8/Q==\r\n") != TRAILER_DOC_SIGNATURE


slicings = st.lists(st.integers(min_value=0, max_value=len(TRAILER_DOC_BODY)), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=slicings)
def test_documented_signed_body_in_random_slices(cuts: list[int]) -> None:
    payload, trailers = decode(DOC_BODY, signer=ChunkSigner(doc_auth(trailer=False)), cuts=cuts)
    assert payload == PAYLOAD
    assert trailers == {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=slicings, final_crlf=st.booleans())
def test_documented_trailer_body_in_random_slices(cuts: list[int], final_crlf: bool) -> None:
    body = TRAILER_DOC_BODY if final_crlf else TRAILER_DOC_BODY[:-2]
    payload, trailers = decode(
        body, signer=ChunkSigner(doc_auth(trailer=True)), expect_trailer=True, cuts=cuts
    )
    assert payload == PAYLOAD
    assert trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    crc = checksums.new_checksum("CRC32C")
    crc.update(payload)
    assert crc.b64digest() == trailers["x-amz-checksum-crc32c"]


def test_documented_body_one_byte_at_a_time() -> None:
    decoder = AwsChunkedDecoder(signer=ChunkSigner(doc_auth(trailer=True)), expect_trailer=True)
    out = bytearray()
    started = time.perf_counter()
    for i in range(len(TRAILER_DOC_BODY)):
        for piece in decoder.feed(TRAILER_DOC_BODY[i : i + 1]):
            out += piece
    assert decoder.finish() == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    assert bytes(out) == PAYLOAD
    assert time.perf_counter() - started < 10  # linear: ~67k tiny feeds


def test_signed_data_is_released_only_after_its_signature() -> None:
    decoder = AwsChunkedDecoder(signer=ChunkSigner(doc_auth(trailer=False)), expect_trailer=False)
    header_end = DOC_BODY.index(b"\r\n") + 2
    assert decoder.feed(DOC_BODY[: header_end + 65535]) == []
    assert decoder.decoded_length == 0
    assert b"".join(decoder.feed(DOC_BODY[header_end + 65535 : header_end + 65536])) == b"a" * 65536
    assert decoder.decoded_length == 65536


# --- Signed bodies from an independent encoder ----------------------------------------------------

SCOPE = "20240301/eu-west-1/s3/aws4_request"
AMZ_DATE = "20240301T120000Z"
KEY = sigv4.derive_signing_key("test-secret", "20240301", "eu-west-1")
SEED = "ab" * 32


def streaming_auth(payload_hash: str = sigv4.STREAMING_SIGNED) -> AuthContext:
    return AuthContext("AKID", False, payload_hash, AMZ_DATE, SCOPE, KEY, SEED)


def hmac_hex(message: str) -> str:
    return hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()


def encode_signed(
    chunks: list[bytes], trailers: dict[str, str] | None = None, *, final_crlf: bool = True
) -> bytes:
    """A signed aws-chunked body, written from the AWS description without the code under test."""
    body, previous = bytearray(), SEED
    for chunk in [*chunks, b""]:
        previous = hmac_hex(
            f"AWS4-HMAC-SHA256-PAYLOAD\n{AMZ_DATE}\n{SCOPE}\n{previous}\n{EMPTY_SHA256}\n"
            + hashlib.sha256(chunk).hexdigest()
        )
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk
        if chunk:
            body += b"\r\n"
    if trailers is not None:
        canonical = "".join(f"{name}:{value}\n" for name, value in trailers.items())
        signature = hmac_hex(
            f"AWS4-HMAC-SHA256-TRAILER\n{AMZ_DATE}\n{SCOPE}\n{previous}\n"
            + hashlib.sha256(canonical.encode()).hexdigest()
        )
        body += canonical.replace("\n", "\r\n").encode() + f"x-amz-trailer-signature:{signature}\r\n".encode()
    if final_crlf:
        body += b"\r\n"
    return bytes(body)


@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2500), max_size=15),
    with_trailer=st.booleans(),
)
def test_random_signed_bodies(chunks: list[bytes], cuts: list[int], with_trailer: bool) -> None:
    data = b"".join(chunks)
    if with_trailer:
        crc = checksums.new_checksum("SHA256")
        crc.update(data)
        trailers = {"x-amz-checksum-sha256": crc.b64digest()}
        body = encode_signed(chunks, trailers)
        signer = ChunkSigner(streaming_auth(sigv4.STREAMING_SIGNED_TRAILER))
        assert decode(body, signer=signer, expect_trailer=True, cuts=cuts) == (data, trailers)
    else:
        body = encode_signed(chunks)
        signer = ChunkSigner(streaming_auth())
        assert decode(body, signer=signer, cuts=cuts) == (data, {})


def test_signed_trailer_with_several_lines() -> None:
    trailers = {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-meta-extra": "v"}
    body = encode_signed([b"abc"], trailers)
    signer = ChunkSigner(streaming_auth(sigv4.STREAMING_SIGNED_TRAILER))
    assert decode(body, signer=signer, expect_trailer=True) == (b"abc", trailers)


def signed_error(body: bytes, *, trailer: bool = False, cuts: list[int] | None = None) -> str:
    payload_hash = sigv4.STREAMING_SIGNED_TRAILER if trailer else sigv4.STREAMING_SIGNED
    signer = ChunkSigner(streaming_auth(payload_hash))
    return error_code(lambda: decode(body, signer=signer, expect_trailer=trailer, cuts=cuts))


def test_signature_errors() -> None:
    good = encode_signed([b"hello", b"world"])
    first_sig = good.split(b"chunk-signature=")[1][:64]
    final_sig = good.split(b"chunk-signature=")[3][:64]

    assert signed_error(good.replace(b"hello", b"hellO")) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(first_sig, b"0" * 64)) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(final_sig, b"0" * 64)) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(b";chunk-signature=" + first_sig, b"")) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(b"0;chunk-signature=" + final_sig, b"0")) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(first_sig, first_sig.upper())) == "SignatureDoesNotMatch"
    assert signed_error(good.replace(b"chunk-signature=", b"chunk-signature=x", 1)) == "SignatureDoesNotMatch"
    # Swapping chunks breaks the chain even though each chunk is individually well signed.
    swapped = encode_signed([b"world", b"hello"])
    parts = swapped.split(b"\r\n")
    reordered = b"\r\n".join([*good.split(b"\r\n")[:2], *parts[2:]])
    assert signed_error(reordered) == "SignatureDoesNotMatch"
    # A body signed for another request (another seed) does not verify.
    other = AuthContext("AKID", False, sigv4.STREAMING_SIGNED, AMZ_DATE, SCOPE, KEY, "cd" * 32)
    assert error_code(lambda: decode(good, signer=ChunkSigner(other))) == "SignatureDoesNotMatch"


def test_trailer_signature_errors() -> None:
    trailers = {"x-amz-checksum-crc32": "AAAAAA=="}
    good = encode_signed([b"data"], trailers)
    assert decode(
        good, signer=ChunkSigner(streaming_auth(sigv4.STREAMING_SIGNED_TRAILER)), expect_trailer=True
    )

    assert signed_error(good.replace(b"AAAAAA==", b"AAAAAB=="), trailer=True) == "SignatureDoesNotMatch"
    signature_line = good[good.index(b"x-amz-trailer-signature:") :]
    without = good.replace(signature_line, b"\r\n")
    assert signed_error(without, trailer=True) == "SignatureDoesNotMatch"
    assert signed_error(without[:-2], trailer=True) == "SignatureDoesNotMatch"  # and without the final CRLF
    wrong = good.replace(signature_line[24:88], b"f" * 64)
    assert signed_error(wrong, trailer=True) == "SignatureDoesNotMatch"
    # Lines after the trailer signature are not signed, so they are refused.
    late = good[:-2] + b"x-amz-meta-late:1\r\n\r\n"
    assert signed_error(late, trailer=True) == "InvalidArgument"
    # The non-trailer variant must not carry trailers at all.
    assert signed_error(encode_signed([b"data"], trailers)) == "InvalidArgument"


def test_signer_requires_a_streaming_request() -> None:
    with pytest.raises(ValueError, match="streaming"):
        ChunkSigner(streaming_auth("UNSIGNED-PAYLOAD"))
    with pytest.raises(ValueError, match="streaming"):
        ChunkSigner(streaming_auth(sigv4.STREAMING_UNSIGNED_TRAILER))


# --- botocore as a real producer -------------------------------------------------------------------

CHECKSUM_CLASSES: dict[str, type[httpchecksum.BaseChecksum]] = {
    "CRC32": httpchecksum.Crc32Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=5000),
    chunk_size=st.integers(min_value=1, max_value=2048),
    algorithm=st.sampled_from(checksums.ALGORITHMS),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=15),
)
def test_botocore_unsigned_trailer_bodies(
    data: bytes, chunk_size: int, algorithm: str, cuts: list[int]
) -> None:
    header = checksums.header_name(algorithm)
    wrapper = httpchecksum.AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=CHECKSUM_CLASSES[algorithm],
        checksum_name=header,
        chunk_size=chunk_size,
    )
    body = wrapper.read()
    payload, trailers = decode(body, expect_trailer=True, cuts=cuts)
    assert payload == data
    assert list(trailers) == [header]
    ours = checksums.new_checksum(algorithm)
    ours.update(payload)
    assert trailers[header] == ours.b64digest()


def test_botocore_body_without_checksum() -> None:
    body = httpchecksum.AwsChunkedWrapper(io.BytesIO(b"xyz" * 100), chunk_size=64).read()
    assert body.endswith(b"0\r\n\r\n")
    assert decode(body) == (b"xyz" * 100, {})
    assert decode(body, expect_trailer=True) == (b"xyz" * 100, {})


class Captured(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


@contextmanager
def fixed_clock(at: datetime) -> Iterator[None]:
    def now(remove_tzinfo: bool = True) -> datetime:
        return at.replace(tzinfo=None) if remove_tzinfo else at

    with (
        mock.patch("botocore.auth.get_current_datetime", now),
        mock.patch("botocore.crt.auth.get_current_datetime", now),
    ):
        yield


def test_boto3_streaming_put_object_end_to_end() -> None:
    """A real boto3 PutObject of a file-like body over https: verify, de-frame, check the trailer."""
    at = datetime(2024, 3, 1, 12, tzinfo=UTC)
    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example.test",
        region_name="us-east-1",
        aws_access_key_id="AKIDBOTO",
        aws_secret_access_key="boto-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )

    def capture(request: AWSPreparedRequest, **_: Any) -> None:
        raise Captured(request)

    client.meta.events.register("before-send.s3", capture)
    data = bytes(range(256)) * 5000  # > 1 MiB, so botocore writes more than one chunk
    with fixed_clock(at), pytest.raises(Captured) as info:
        client.put_object(Bucket="bucket", Key="dir/ü.bin", Body=io.BytesIO(data), ChecksumAlgorithm="CRC32C")
    prepared = info.value.request
    parts = urlsplit(prepared.url)
    headers = {
        name.lower(): (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
        for name, value in prepared.headers.items()
    }
    headers.setdefault("host", parts.netloc)
    auth = sigv4.verify(
        SignedRequest(prepared.method, parts.path, parts.query, headers),
        Keys({"AKIDBOTO": "boto-secret"}),
        now=at,
    )
    assert auth.payload_hash == sigv4.STREAMING_UNSIGNED_TRAILER
    assert "aws-chunked" in headers["content-encoding"]
    assert checksums.requested_checksum(headers) == ("CRC32C", None)

    body = prepared.body.read() if hasattr(prepared.body, "read") else prepared.body
    payload, trailers = decode(body, expect_trailer=True, cuts=list(range(0, len(body), 7777)))
    assert payload == data
    assert len(payload) == int(headers["x-amz-decoded-content-length"])
    crc = checksums.new_checksum("CRC32C")
    crc.update(payload)
    assert trailers == {"x-amz-checksum-crc32c": crc.b64digest()}


# --- Framing errors --------------------------------------------------------------------------------

UNSIGNED = b"5\r\nhello\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"


def unsigned_error(body: bytes, *, expect_trailer: bool = True, max_chunk_size: int = 1024) -> str:
    return error_code(lambda: decode(body, expect_trailer=expect_trailer, max_chunk_size=max_chunk_size))


def test_unsigned_reference_body() -> None:
    assert decode(UNSIGNED, expect_trailer=True) == (b"helloabc", {"x-amz-checksum-crc32": "AAAAAA=="})
    # Chunk extensions are ignored without a signer; upper-case hex and leading zeros are fine.
    assert decode(b"0A;foo=bar\r\n0123456789\r\n00\r\n\r\n") == (b"0123456789", {})
    # Trailer names are lower-cased and values trimmed; an unsigned trailer signature is dropped.
    body = b"1\r\nx\r\n0\r\nX-Amz-Checksum-CRC32: \t AAAAAA== \r\nx-amz-trailer-signature:abc\r\n\r\n"
    assert decode(body, expect_trailer=True) == (b"x", {"x-amz-checksum-crc32": "AAAAAA=="})


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # size is not hex
        b"\r\nhello\r\n0\r\n\r\n",  # empty size
        b" 5\r\nhello\r\n0\r\n\r\n",  # whitespace before size
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",  # more than 16 hex digits
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # missing CRLF after data
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r\r\n0\r\n\r\n",
        b"401\r\n" + b"x" * 1025 + b"\r\n0\r\n\r\n",  # bigger than max_chunk_size
        b"5\r\nhello\r\n0\r\n\r\nextra",  # data after the end
        b"5\r\nhello\r\n0\r\n\r\n\r\n",
        b"5\r\nhello\r\n0\r\nno-colon\r\n\r\n",  # trailer without ':'
        b"5\r\nhello\r\n0\r\n:value\r\n\r\n",  # trailer without a name
        b"5\r\nhello\r\n0\r\na:1\r\na:2\r\n\r\n",  # duplicate trailer
        b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:\xff\r\n\r\n",  # non-ASCII trailer
        b"5\r\nhello\r\n0\r\na:\rb\r\n\r\n",  # control characters in a trailer
        b"5\r\nhello\r\n0\r\na:b\x00c\r\n\r\n",
        b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32 :AAAAAA==\r\n\r\n",  # blank before ':'
        b"5\r\nhello\r\n0\r\nx amz:AAAAAA==\r\n\r\n",
        b"5" * 5000,  # a header line that never ends
        b"5\r\nhello\r\n0\r\n" + b"x-amz-meta-a:" + b"v" * 5000 + b"\r\n\r\n",  # over-long trailer line
    ],
)
def test_framing_errors_are_invalid_argument(body: bytes) -> None:
    with pytest.raises(errors.S3Error) as info:
        decode(body, expect_trailer=True, max_chunk_size=1024)
    assert (info.value.code, info.value.message) == (
        "InvalidArgument",
        "Failed to decode AWS chunked transfer encoding",
    )


def test_too_many_trailer_bytes() -> None:
    lines = b"".join(b"x-amz-meta-%d:%s\r\n" % (i, b"v" * 100) for i in range(200))
    assert unsigned_error(b"0\r\n" + lines + b"\r\n") == "InvalidArgument"


def test_trailers_only_when_expected() -> None:
    assert unsigned_error(UNSIGNED, expect_trailer=False) == "InvalidArgument"


@pytest.mark.parametrize("expect_trailer", [True, False])
def test_truncated_bodies(expect_trailer: bool) -> None:
    body = UNSIGNED if expect_trailer else b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    # Where the body may legitimately stop early: after the final chunk when no trailer is due,
    # or right after a complete trailer line.
    lenient = {body.index(b"0\r\n") + 3} if not expect_trailer else {len(body) - 2}
    for end in range(len(body)):
        if end in lenient:
            decode(body[:end], expect_trailer=expect_trailer)
            continue
        code = error_code(decode, body[:end], expect_trailer=expect_trailer)
        assert code == "IncompleteBody", end


def test_truncated_signed_body() -> None:
    body = encode_signed([b"x" * 100])
    for end in (0, 10, 90, 120, len(body) - 3):
        assert signed_error(body[:end]) == "IncompleteBody", end


def test_errors_are_sticky() -> None:
    decoder = AwsChunkedDecoder(signer=None, expect_trailer=False)
    with pytest.raises(errors.S3Error):
        decoder.feed(b"zz\r\n")
    with pytest.raises(errors.S3Error) as info:
        decoder.feed(b"5\r\nhello\r\n")
    assert info.value.code == "InvalidArgument"
    with pytest.raises(errors.S3Error):
        decoder.finish()


def test_finish_is_repeatable_and_rejects_more_data() -> None:
    decoder = AwsChunkedDecoder(signer=None, expect_trailer=True)
    assert b"".join(decoder.feed(UNSIGNED)) == b"helloabc"
    assert decoder.finish() == {"x-amz-checksum-crc32": "AAAAAA=="}
    assert decoder.finish() == {"x-amz-checksum-crc32": "AAAAAA=="}
    assert decoder.feed(b"") == []
    with pytest.raises(errors.S3Error):
        decoder.feed(b"x")


def test_unsigned_data_streams_without_buffering() -> None:
    decoder = AwsChunkedDecoder(signer=None, expect_trailer=False)
    assert decoder.feed(b"10000\r\n" + b"q" * 1000) == [b"q" * 1000]
    assert decoder.feed(b"q") == [b"q"]
    assert decoder.decoded_length == 1001


def test_large_unsigned_body_in_tiny_slices_is_linear() -> None:
    body = httpchecksum.AwsChunkedWrapper(io.BytesIO(b"z" * 300_000), chunk_size=65536).read()
    started = time.perf_counter()
    assert decode(body, cuts=list(range(0, len(body), 3)))[0] == b"z" * 300_000
    assert time.perf_counter() - started < 10
