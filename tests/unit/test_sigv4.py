"""SigV4 verification against requests signed by botocore, plus AWS's published examples."""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.crt.auth import CrtS3SigV4Auth, CrtS3SigV4QueryAuth
from botocore.utils import percent_encode, percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltaglider_proxy.s3api import errors, sigv4
from deltaglider_proxy.s3api.sigv4 import SignedRequest

AKID = "AKIDPROXYTEST0001"
SECRET = "s3cr3t/with+odd=chars"
SIGNED_AT = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
ENDPOINT = "https://s3.example.test"

DOC_AKID = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_TIME = datetime(2013, 5, 24, 0, 0, 0, tzinfo=UTC)


class Keys:
    """A CredentialLookup over a dict."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def secret_for(self, access_key_id: str) -> str | None:
        return self.secrets.get(access_key_id)


KEYS = Keys({AKID: SECRET, DOC_AKID: DOC_SECRET})


@contextmanager
def clock(at: datetime) -> Iterator[None]:
    """Make botocore's signers (pure Python and the awscrt-backed ones boto3 prefers) sign as of ``at``."""

    def now(remove_tzinfo: bool = True) -> datetime:
        return at.replace(tzinfo=None) if remove_tzinfo else at

    with (
        mock.patch("botocore.auth.get_current_datetime", now),
        mock.patch("botocore.crt.auth.get_current_datetime", now),
    ):
        yield


def wire_text(value: str | bytes) -> str:
    # Servers hand header values over decoded as latin-1; the CRT signer leaves them as bytes.
    return value.decode("latin-1") if isinstance(value, bytes) else value


def on_the_wire(prepared: AWSPreparedRequest) -> SignedRequest:
    """What a server sees: raw path and query from the request line, lower-cased trimmed headers."""
    parts = urlsplit(prepared.url)
    headers = {name.lower(): wire_text(value).strip() for name, value in prepared.headers.items()}
    headers.setdefault("host", parts.netloc)  # the HTTP client adds Host from the URL
    return SignedRequest(prepared.method, parts.path, parts.query, headers)


def object_url(bucket: str, key: str, query: str = "") -> str:
    # The same encoding botocore's REST serializer applies to the {Key+} label.
    url = f"{ENDPOINT}/{bucket}/{percent_encode(key, safe='/~')}"
    return f"{url}?{query}" if query else url


# Two independent client implementations: botocore's Python signer and the aws-c-auth one (awscrt)
# that boto3 picks whenever awscrt is installed.
HEADER_SIGNERS = [S3SigV4Auth, CrtS3SigV4Auth]


def sign(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    region: str = "us-east-1",
    at: datetime = SIGNED_AT,
    signer: type[S3SigV4Auth] | type[CrtS3SigV4Auth] = S3SigV4Auth,
) -> SignedRequest:
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    with clock(at):
        signer(Credentials(AKID, SECRET), "s3", region).add_auth(request)
    return on_the_wire(request.prepare())


def presign(
    url: str,
    *,
    expires: int = 3600,
    at: datetime = SIGNED_AT,
    signer: type[S3SigV4QueryAuth] | type[CrtS3SigV4QueryAuth] = S3SigV4QueryAuth,
) -> SignedRequest:
    request = AWSRequest(method="GET", url=url)
    with clock(at):
        signer(Credentials(AKID, SECRET), "s3", "us-east-1", expires=expires).add_auth(request)
    return on_the_wire(request.prepare())


def verify(req: SignedRequest, *, now: datetime = SIGNED_AT, keys: Keys = KEYS) -> sigv4.AuthContext:
    return sigv4.verify(req, keys, now=now)


def error_code(call: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """The S3 error code ``call(*args, **kwargs)`` raises."""
    with pytest.raises(errors.S3Error) as info:
        call(*args, **kwargs)
    return info.value.code


def with_headers(req: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = dict(req.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return replace(req, headers=headers)


# --- AWS's published examples -------------------------------------------------------------------


def test_aws_documentation_header_example() -> None:
    """GET /test.txt with Range, from "Signature Calculations for the Authorization Header"."""
    req = SignedRequest(
        "GET",
        "/test.txt",
        "",
        {
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "x-amz-date": "20130524T000000Z",
            "authorization": (
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
        },
    )
    auth = verify(req, now=DOC_TIME)
    assert auth.access_key_id == DOC_AKID
    assert not auth.presigned
    assert auth.seed_signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    assert auth.scope == "20130524/us-east-1/s3/aws4_request"
    assert auth.amz_date == "20130524T000000Z"
    assert auth.payload_hash == req.headers["x-amz-content-sha256"]
    assert auth.signing_key == sigv4.derive_signing_key(DOC_SECRET, "20130524", "us-east-1")
    assert (
        error_code(lambda: verify(with_headers(req, range="bytes=0-10"), now=DOC_TIME))
        == "SignatureDoesNotMatch"
    )


def test_aws_documentation_presigned_example() -> None:
    """The presigned GET /test.txt from "Authenticating Requests: Using Query Parameters"."""
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )
    req = SignedRequest("GET", "/test.txt", query, {"host": "examplebucket.s3.amazonaws.com"})
    auth = verify(req, now=DOC_TIME + timedelta(hours=23))
    assert auth.presigned
    assert auth.payload_hash == "UNSIGNED-PAYLOAD"
    assert error_code(lambda: verify(req, now=DOC_TIME + timedelta(days=1, seconds=1))) == "AccessDenied"


def test_derive_signing_key_documented_vector() -> None:
    # From the SigV4 "derive a signing key" example in the AWS General Reference.
    key = sigv4.derive_signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"


def test_signing_key_stays_out_of_repr() -> None:
    auth = verify(sign("GET", object_url("bucket", "key")))
    assert auth.signing_key.hex() not in repr(auth)
    assert "signing_key" not in repr(auth)


# --- botocore-signed requests ----------------------------------------------------------------------

REQUESTS: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("GET", "bucket", "", {}, b""),
    ("GET", "bucket", "list-type=2&prefix=photos%2F2024%2F&delimiter=%2F", {}, b""),
    ("GET", "bucket", "list-type=2&prefix=a%20b%2Bc%25d~e&max-keys=10&continuation-token=", {}, b""),
    ("GET", "bucket/plain-key.txt", "", {"Range": "bytes=0-99"}, b""),
    ("GET", "bucket/dir//double//slash", "", {}, b""),
    ("GET", "bucket/./dots/../kept", "", {}, b""),
    ("PUT", "bucket/spaces and+plus%percent~tilde", "", {"Content-Type": "text/plain"}, b"hello"),
    ("PUT", "bucket/ünïcødé/日本語/😀.bin", "", {"x-amz-meta-note": "a   b\t c"}, b"\x00\x01"),
    ("POST", "bucket/big.bin", "uploads", {}, b""),
    ("POST", "bucket/big.bin", "uploads=", {}, b""),
    ("PUT", "bucket/big.bin", "partNumber=3&uploadId=abc%2Bdef%3D%3D", {}, b"part"),
    ("POST", "bucket", "delete", {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="}, b"<Delete/>"),
    ("DELETE", "bucket/key", "versionId=null", {}, b""),
    ("HEAD", "bucket/key", "", {"If-None-Match": '"etag"'}, b""),
    ("GET", "bucket", "acl", {}, b""),
    ("GET", "bucket", "versions&prefix=&key-marker=k%20m", {}, b""),
    ("PUT", "bucket/copy", "", {"x-amz-copy-source": "src/ke%20y%2Bz"}, b""),
]


@pytest.mark.parametrize("signer", HEADER_SIGNERS)
@pytest.mark.parametrize(("method", "path", "query", "headers", "body"), REQUESTS)
def test_botocore_signed_requests_verify(
    signer: type[S3SigV4Auth], method: str, path: str, query: str, headers: dict[str, str], body: bytes
) -> None:
    bucket, _, key = path.partition("/")
    url = (
        object_url(bucket, key, query)
        if key
        else (f"{ENDPOINT}/{bucket}?{query}" if query else f"{ENDPOINT}/{bucket}")
    )
    req = sign(method, url, headers=headers, body=body, signer=signer)
    auth = verify(req)
    assert auth.access_key_id == AKID
    assert auth.seed_signature == req.headers["authorization"].rsplit("Signature=", 1)[1]
    assert auth.payload_hash == req.headers["x-amz-content-sha256"]

    # Every piece that went into the signature is covered by it.
    assert error_code(lambda: verify(replace(req, method="PATCH"))) == "SignatureDoesNotMatch"
    assert error_code(lambda: verify(replace(req, raw_path=req.raw_path + "x"))) == "SignatureDoesNotMatch"
    extra = f"{req.query_string}&x-id=1" if req.query_string else "x-id=1"
    assert error_code(lambda: verify(replace(req, query_string=extra))) == "SignatureDoesNotMatch"
    assert error_code(lambda: verify(with_headers(req, host="evil.example"))) == "SignatureDoesNotMatch"
    changed_hash = "0" * 64
    assert (
        error_code(lambda: verify(with_headers(req, x_amz_content_sha256=changed_hash)))
        == "SignatureDoesNotMatch"
    )
    other_secret = Keys({AKID: SECRET + "x"})
    assert error_code(lambda: verify(req, keys=other_secret)) == "SignatureDoesNotMatch"
    # Headers the client did not sign may be added by proxies on the way.
    assert verify(with_headers(req, x_forwarded_for="10.0.0.1", user_agent="changed")).access_key_id == AKID


def test_raw_plus_in_query_is_a_literal_plus() -> None:
    # The CRT signer canonicalises the query itself, decoding "+" as a literal plus, as we do.
    req = sign("GET", f"{ENDPOINT}/bucket?list-type=2&prefix=a+b", signer=CrtS3SigV4Auth)
    verify(req)
    verify(replace(req, query_string="list-type=2&prefix=a%2Bb"))
    as_space = replace(req, query_string="list-type=2&prefix=a%20b")
    assert error_code(lambda: verify(as_space)) == "SignatureDoesNotMatch"


def test_every_signed_header_is_covered() -> None:
    headers = {"Range": "bytes=1-2", "x-amz-meta-color": "blue", "Content-Type": "text/plain"}
    req = sign("PUT", object_url("bucket", "key"), headers=headers, body=b"x")
    signed = req.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"range", "x-amz-meta-color", "content-type", "host", "x-amz-date", "x-amz-content-sha256"} <= set(
        signed
    )
    for name in signed:
        if name in ("x-amz-date", "x-amz-content-sha256"):
            continue  # the date has its own tests (skew / scope); the payload hash is checked above
        changed = with_headers(req, **{name.replace("-", "_"): req.headers[name] + "1"})
        assert error_code(verify, changed) == "SignatureDoesNotMatch", name
        removed = with_headers(req, **{name.replace("-", "_"): None})
        assert error_code(verify, removed) == "SignatureDoesNotMatch", name


def test_header_whitespace_is_canonicalised() -> None:
    req = sign("PUT", object_url("bucket", "key"), headers={"x-amz-meta-a": "one   two \t three"}, body=b"")
    assert req.headers["x-amz-meta-a"] == "one   two \t three"
    verify(req)
    verify(with_headers(req, x_amz_meta_a="one two three"))
    verify(with_headers(req, x_amz_meta_a="  one \t\t two three  "))
    assert (
        error_code(lambda: verify(with_headers(req, x_amz_meta_a="onetwo three"))) == "SignatureDoesNotMatch"
    )


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "garage", "local-1"])
def test_any_region_is_accepted(region: str) -> None:
    auth = verify(sign("GET", object_url("bucket", "key"), region=region))
    assert auth.scope == f"20240301/{region}/s3/aws4_request"


keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, prefix=st.text(st.characters(codec="utf-8"), max_size=20))
def test_random_keys_and_prefixes(key: str, prefix: str) -> None:
    req = sign("PUT", object_url("bucket", key), body=b"data")
    verify(req)
    mangled = replace(req, raw_path=req.raw_path + "%20")
    assert error_code(lambda: verify(mangled)) == "SignatureDoesNotMatch"

    query = percent_encode_sequence({"list-type": "2", "prefix": prefix})
    listing = sign("GET", f"{ENDPOINT}/bucket?{query}")
    verify(listing)


# --- Real boto3 clients ---------------------------------------------------------------------------


class Captured(Exception):
    """Raised from before-send so no connection is attempted."""

    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


def boto3_request(operation: str, **params: Any) -> SignedRequest:
    """The request a real boto3 client would put on the wire for ``operation``."""
    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )

    def capture(request: AWSPreparedRequest, **_: Any) -> None:
        raise Captured(request)

    client.meta.events.register("before-send.s3", capture)
    with clock(SIGNED_AT), pytest.raises(Captured) as info:
        getattr(client, operation)(**params)
    return on_the_wire(info.value.request)


BOTO3_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("list_buckets", {}),
    ("head_bucket", {"Bucket": "bucket"}),
    ("list_objects_v2", {"Bucket": "bucket", "Prefix": "dir with space/+plus/ü", "Delimiter": "/"}),
    ("get_object", {"Bucket": "bucket", "Key": "a b/c+d/é~!*'()", "Range": "bytes=0-9"}),
    ("put_object", {"Bucket": "bucket", "Key": "k%25/x", "Body": b"hello", "Metadata": {"m": "v  w"}}),
    ("put_object", {"Bucket": "bucket", "Key": "streamed", "Body": io.BytesIO(b"x" * 1000)}),
    ("create_multipart_upload", {"Bucket": "bucket", "Key": "mp/ü"}),
    ("upload_part", {"Bucket": "bucket", "Key": "mp", "UploadId": "a+b/c=", "PartNumber": 2, "Body": b"p"}),
    ("copy_object", {"Bucket": "bucket", "Key": "dst", "CopySource": {"Bucket": "src", "Key": "ü k+y"}}),
    ("delete_objects", {"Bucket": "bucket", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b c"}]}}),
    ("list_object_versions", {"Bucket": "bucket", "Prefix": "", "KeyMarker": "m~"}),
]


@pytest.mark.parametrize(("operation", "params"), BOTO3_CALLS, ids=[op for op, _ in BOTO3_CALLS])
def test_boto3_client_requests_verify(operation: str, params: dict[str, Any]) -> None:
    req = boto3_request(operation, **params)
    auth = verify(req)
    assert auth.access_key_id == AKID
    assert error_code(lambda: verify(replace(req, raw_path=req.raw_path + "/"))) == "SignatureDoesNotMatch"


def test_boto3_streaming_put_declares_unsigned_trailer() -> None:
    req = boto3_request("put_object", Bucket="bucket", Key="k", Body=io.BytesIO(b"abc"))
    assert verify(req).payload_hash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


# --- Header authentication failures -------------------------------------------------------------


@pytest.fixture
def signed() -> SignedRequest:
    return sign("GET", object_url("bucket", "key"), headers={"Range": "bytes=0-1"})


def test_missing_authorization_is_access_denied(signed: SignedRequest) -> None:
    assert error_code(lambda: verify(with_headers(signed, authorization=None))) == "AccessDenied"
    assert error_code(lambda: verify(with_headers(signed, authorization=""))) == "AccessDenied"


def test_unknown_access_key(signed: SignedRequest) -> None:
    assert error_code(lambda: verify(signed, keys=Keys({}))) == "AccessDenied"


def test_sigv2_is_invalid_request(signed: SignedRequest) -> None:
    req = with_headers(signed, authorization="AWS AKIDPROXYTEST0001:frJIUN8DYpKDtOLCwo//yllqDzg=")
    with pytest.raises(errors.S3Error) as info:
        verify(req)
    assert (info.value.code, info.value.message) == ("InvalidRequest", "Please use AWS4-HMAC-SHA256.")


def replace_in_authorization(req: SignedRequest, old: str, new: str) -> SignedRequest:
    assert old in req.headers["authorization"]
    return with_headers(req, authorization=req.headers["authorization"].replace(old, new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA512 "),
        ("AWS4-HMAC-SHA256 ", "AWS4-ECDSA-P256-SHA256 "),
        ("AWS4-HMAC-SHA256 ", "Basic "),
        ("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256"),
        ("/s3/", "/ec2/"),
        ("/aws4_request", "/aws5_request"),
        ("/us-east-1/", "//"),
        ("/20240301/", "/2024031/"),
        (f"{AKID}/", "/"),
        ("Credential=", "Credentials="),
        ("SignedHeaders=", "Headers="),
        (", Signature=", ", Signature=x, Signature="),
        ("Signature=", "Signature=, Extra="),
        ("SignedHeaders=host;", "SignedHeaders=host;;"),
    ],
)
def test_malformed_authorization_is_invalid_argument(signed: SignedRequest, old: str, new: str) -> None:
    req = replace_in_authorization(signed, old, new)
    with pytest.raises(errors.S3Error) as info:
        verify(req)
    assert (info.value.code, info.value.status) == ("InvalidArgument", 400)


def test_authorization_parts_in_any_order(signed: SignedRequest) -> None:
    parts = [p.strip() for p in signed.headers["authorization"].removeprefix("AWS4-HMAC-SHA256 ").split(",")]
    reordered = "AWS4-HMAC-SHA256 " + " , ".join(reversed(parts))
    verify(with_headers(signed, authorization=reordered))


def test_host_must_be_signed() -> None:
    req = sign("GET", object_url("bucket", "key"))
    req = replace_in_authorization(req, "SignedHeaders=host;", "SignedHeaders=")
    assert error_code(lambda: verify(req)) == "AccessDenied"


def test_missing_or_unparseable_date_is_access_denied(signed: SignedRequest) -> None:
    assert error_code(lambda: verify(with_headers(signed, x_amz_date=None))) == "AccessDenied"
    assert (
        error_code(lambda: verify(with_headers(signed, x_amz_date="2024-03-01T12:00:00Z"))) == "AccessDenied"
    )
    assert error_code(lambda: verify(with_headers(signed, x_amz_date="20241301T120000Z"))) == "AccessDenied"
    rfc1123 = with_headers(signed, x_amz_date=None, date="Fri, 01 Mar 2024 12:00:00 GMT")
    assert error_code(lambda: verify(rfc1123)) == "AccessDenied"


def test_clock_skew(signed: SignedRequest) -> None:
    verify(signed, now=SIGNED_AT + timedelta(seconds=300))
    verify(signed, now=SIGNED_AT - timedelta(seconds=300))
    assert (
        error_code(lambda: verify(signed, now=SIGNED_AT + timedelta(seconds=301))) == "RequestTimeTooSkewed"
    )
    assert (
        error_code(lambda: verify(signed, now=SIGNED_AT - timedelta(seconds=301))) == "RequestTimeTooSkewed"
    )
    assert sigv4.verify(signed, KEYS, now=SIGNED_AT + timedelta(seconds=900), clock_skew_seconds=900)
    # A naive "now" is taken as UTC.
    verify(signed, now=SIGNED_AT.replace(tzinfo=None))


def test_changed_date_within_skew_fails_signature(signed: SignedRequest) -> None:
    assert (
        error_code(lambda: verify(with_headers(signed, x_amz_date="20240301T120001Z")))
        == "SignatureDoesNotMatch"
    )


def test_scope_date_must_match_request_date() -> None:
    near_midnight = datetime(2024, 3, 1, 23, 59, 0, tzinfo=UTC)
    req = sign("GET", object_url("bucket", "key"), at=near_midnight)
    req = replace_in_authorization(req, "/20240301/", "/20240302/")
    assert error_code(lambda: verify(req, now=near_midnight)) == "SignatureDoesNotMatch"


def test_signature_compared_exactly(signed: SignedRequest) -> None:
    signature = signed.headers["authorization"].rsplit("Signature=", 1)[1]
    upper = replace_in_authorization(signed, signature, signature.upper())
    assert error_code(lambda: verify(upper)) == "SignatureDoesNotMatch"
    short = replace_in_authorization(signed, signature, signature[:-1])
    assert error_code(lambda: verify(short)) == "SignatureDoesNotMatch"


def test_unknown_payload_hash_literal_is_rejected(signed: SignedRequest) -> None:
    req = with_headers(signed, x_amz_content_sha256="STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD")
    assert error_code(lambda: verify(req)) == "InvalidArgument"


def test_absent_payload_hash_means_unsigned_payload() -> None:
    # botocore always sends x-amz-content-sha256, so this request is signed by hand: over host and
    # x-amz-date only, with UNSIGNED-PAYLOAD as the payload line.
    amz_date, scope = "20240301T120000Z", "20240301/us-east-1/s3/aws4_request"
    canonical = "\n".join(
        [
            "GET",
            "/bucket/key",
            "",
            f"host:s3.example.test\nx-amz-date:{amz_date}\n",
            "host;x-amz-date",
            "UNSIGNED-PAYLOAD",
        ]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = sigv4.derive_signing_key(SECRET, "20240301", "us-east-1")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={AKID}/{scope}, SignedHeaders=host;x-amz-date, Signature={signature}"
    )
    req = SignedRequest(
        "GET",
        "/bucket/key",
        "",
        {"host": "s3.example.test", "x-amz-date": amz_date, "authorization": authorization},
    )
    auth = verify(req)
    assert auth.payload_hash == "UNSIGNED-PAYLOAD"
    assert auth.seed_signature == signature


# --- Presigned URLs -------------------------------------------------------------------------------


def boto3_presigned(key: str, *, expires: int = 3600, operation: str = "get_object") -> SignedRequest:
    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    with clock(SIGNED_AT):
        url = client.generate_presigned_url(
            operation, Params={"Bucket": "bucket", "Key": key}, ExpiresIn=expires
        )
    parts = urlsplit(url)
    return SignedRequest(
        "GET" if operation == "get_object" else "PUT", parts.path, parts.query, {"host": parts.netloc}
    )


@settings(max_examples=100, deadline=None)
@given(key=keys)
def test_presigned_random_keys(key: str) -> None:
    req = boto3_presigned(key)
    auth = verify(req, now=SIGNED_AT + timedelta(minutes=30))
    assert auth.presigned
    assert auth.payload_hash == "UNSIGNED-PAYLOAD"
    assert error_code(lambda: verify(replace(req, raw_path=req.raw_path + "x"))) == "SignatureDoesNotMatch"


def test_presigned_put_and_extra_query() -> None:
    req = boto3_presigned("upload/ü", operation="put_object")
    verify(req)
    assert error_code(lambda: verify(replace(req, method="GET"))) == "SignatureDoesNotMatch"
    tampered = replace(req, query_string=req.query_string + "&response-content-type=text%2Fhtml")
    assert error_code(lambda: verify(tampered)) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("signer", [S3SigV4QueryAuth, CrtS3SigV4QueryAuth])
def test_presigned_with_operation_params(signer: type[S3SigV4QueryAuth]) -> None:
    disposition = "attachment%3B%20filename%3D%22a%2Bb.txt%22"
    url = f"{ENDPOINT}/bucket/k%C3%BC?response-content-disposition={disposition}&versionId="
    req = presign(url, expires=60, signer=signer)
    auth = verify(req)
    assert (
        auth.seed_signature == dict(p.split("=", 1) for p in req.query_string.split("&"))["X-Amz-Signature"]
    )


def test_presigned_expiry() -> None:
    req = presign(f"{ENDPOINT}/bucket/key", expires=60)
    verify(req, now=SIGNED_AT + timedelta(seconds=60))
    with pytest.raises(errors.S3Error) as info:
        verify(req, now=SIGNED_AT + timedelta(seconds=61))
    assert (info.value.code, info.value.message) == ("AccessDenied", "Request has expired")


def test_presigned_seven_day_limit() -> None:
    verify(presign(f"{ENDPOINT}/bucket/key", expires=604800), now=SIGNED_AT + timedelta(days=6))
    with pytest.raises(errors.S3Error) as info:
        verify(presign(f"{ENDPOINT}/bucket/key", expires=604801))
    assert info.value.code == "InvalidArgument"
    assert "604800" in info.value.message


def test_presigned_in_the_future() -> None:
    req = presign(f"{ENDPOINT}/bucket/key", expires=3600)
    verify(req, now=SIGNED_AT - timedelta(seconds=300))
    assert error_code(lambda: verify(req, now=SIGNED_AT - timedelta(seconds=301))) == "RequestTimeTooSkewed"


def drop_param(req: SignedRequest, name: str) -> SignedRequest:
    kept = [p for p in req.query_string.split("&") if p.split("=", 1)[0] != name]
    assert len(kept) < len(req.query_string.split("&"))
    return replace(req, query_string="&".join(kept))


def set_param(req: SignedRequest, name: str, value: str) -> SignedRequest:
    pairs = [p if p.split("=", 1)[0] != name else f"{name}={value}" for p in req.query_string.split("&")]
    return replace(req, query_string="&".join(pairs))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("X-Amz-Credential", "AccessDenied"),
        ("X-Amz-Signature", "AccessDenied"),
        ("X-Amz-SignedHeaders", "AccessDenied"),
        ("X-Amz-Date", "AccessDenied"),
        ("X-Amz-Expires", "InvalidArgument"),
    ],
)
def test_presigned_missing_parameter(name: str, code: str) -> None:
    req = presign(f"{ENDPOINT}/bucket/key")
    assert error_code(lambda: verify(drop_param(req, name))) == code


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA1", "InvalidArgument"),
        ("X-Amz-Expires", "0", "InvalidArgument"),
        ("X-Amz-Expires", "-5", "InvalidArgument"),
        ("X-Amz-Expires", "1_000", "InvalidArgument"),
        ("X-Amz-Expires", "abc", "InvalidArgument"),
        ("X-Amz-Date", "20240301", "InvalidArgument"),
        ("X-Amz-Credential", "nodelimiter", "AccessDenied"),
        ("X-Amz-Credential", f"{AKID}%2F20240301%2Fus-east-1%2Fsts%2Faws4_request", "InvalidArgument"),
        ("X-Amz-Credential", "NOSUCHKEY%2F20240301%2Fus-east-1%2Fs3%2Faws4_request", "AccessDenied"),
        ("X-Amz-Credential", f"{AKID}%2F20240302%2Fus-east-1%2Fs3%2Faws4_request", "SignatureDoesNotMatch"),
        ("X-Amz-SignedHeaders", "x-amz-date", "AccessDenied"),
        ("X-Amz-Signature", "0" * 64, "SignatureDoesNotMatch"),
        ("X-Amz-Expires", "3601", "SignatureDoesNotMatch"),
    ],
)
def test_presigned_bad_parameter(name: str, value: str, code: str) -> None:
    req = presign(f"{ENDPOINT}/bucket/key")
    assert error_code(lambda: verify(set_param(req, name, value))) == code


def test_presigned_parameter_repeated() -> None:
    req = presign(f"{ENDPOINT}/bucket/key")
    again = replace(req, query_string=req.query_string + "&X-Amz-Date=20240301T120000Z")
    assert error_code(lambda: verify(again)) == "InvalidArgument"


def test_presigned_and_authorization_header_together() -> None:
    req = presign(f"{ENDPOINT}/bucket/key")
    header_signed = sign("GET", f"{ENDPOINT}/bucket/key")
    both = with_headers(req, authorization=header_signed.headers["authorization"])
    assert error_code(lambda: verify(both)) == "InvalidArgument"


# --- Canonical forms and detection ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/bucket/key", "/bucket/key"),
        ("/bucket/a%20b", "/bucket/a%20b"),
        ("/bucket/a+b", "/bucket/a%2Bb"),
        ("/bucket/a%2Bb", "/bucket/a%2Bb"),
        ("/bucket/a%2bb", "/bucket/a%2Bb"),
        ("/bucket/%41%7e", "/bucket/A~"),
        ("/bucket/a%2Fb", "/bucket/a%2Fb"),
        ("/bucket//x/./../y", "/bucket//x/./../y"),
        ("/bucket/%zz", "/bucket/%25zz"),
        ("/bucket/ü", "/bucket/%C3%BC"),
        ("/bucket/!$&'()*,;=:@", "/bucket/%21%24%26%27%28%29%2A%2C%3B%3D%3A%40"),
    ],
)
def test_canonical_uri(raw: str, canonical: str) -> None:
    assert sigv4.canonical_uri(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("a=b+c", "a=b%2Bc"),
        ("a=b%2Bc", "a=b%2Bc"),
        ("a=b%20c", "a=b%20c"),
        ("prefix=a/b", "prefix=a%2Fb"),
        ("uploads", "uploads="),
        ("uploads=", "uploads="),
        ("&&b=2&&a=1&", "a=1&b=2"),
        ("a=2&a=1&a=10", "a=1&a=10&a=2"),
        ("x=a=b", "x=a%3Db"),
        ("%7Ekey=%7evalue", "~key=~value"),
        ("B=1&a=1", "B=1&a=1"),
    ],
)
def test_canonical_query_string(raw: str, canonical: str) -> None:
    assert sigv4.canonical_query_string(raw) == canonical


def test_presigned_canonical_query_excludes_only_the_signature() -> None:
    query = "X-Amz-Signature=abc&x-amz-signature=def&X-Amz-Date=1"
    assert sigv4.canonical_query_string(query, presigned=True) == "X-Amz-Date=1&x-amz-signature=def"
    assert sigv4.canonical_query_string(query) == "X-Amz-Date=1&X-Amz-Signature=abc&x-amz-signature=def"


def test_is_presigned_and_has_credentials() -> None:
    assert sigv4.is_presigned("X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert sigv4.is_presigned("a=1&X%2DAmz%2DAlgorithm=x")
    assert not sigv4.is_presigned("x-amz-algorithm=AWS4-HMAC-SHA256")
    assert not sigv4.is_presigned("AWSAccessKeyId=a&Signature=b&Expires=1")
    assert not sigv4.is_presigned("")
    anonymous = SignedRequest("GET", "/b/k", "", {"host": "h"})
    assert not sigv4.has_credentials(anonymous)
    assert sigv4.has_credentials(with_headers(anonymous, authorization="AWS4-HMAC-SHA256 x"))
    assert sigv4.has_credentials(replace(anonymous, query_string="X-Amz-Algorithm=x"))
    assert error_code(lambda: verify(anonymous)) == "AccessDenied"
