"""Verification of AWS Signature Version 4 for S3 requests (server side).

Two forms are accepted: the ``Authorization`` header and presigned URLs (query parameters).
:func:`verify` either returns an :class:`AuthContext` or raises one of the S3 errors from
:mod:`deltaglider_proxy.s3api.errors`; it never returns a partial result.

Canonicalisation follows the S3 flavour of SigV4: the path is single-encoded and not
dot-normalised. Path segments and query names/values are decoded from what arrived on the wire
and re-encoded, so equivalent spellings (``%7E``/``~``, ``%2b``/``%2B``) canonicalise alike.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import quote, unquote_to_bytes

from deltaglider_proxy.s3api import errors

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
MAX_PRESIGNED_EXPIRES = 604800  # seven days, S3's limit

_PAYLOAD_LITERALS = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_SCOPE_DATE = re.compile(r"\d{8}")
_EXPIRES = re.compile(r"[0-9]{1,10}")
_AUTH_HEADER = re.compile(r"AWS4-HMAC-SHA256\s+(.*)", re.DOTALL)
_BAD_AUTH_HEADER = "Invalid Authorization header format"
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
# Missing any of these is AccessDenied; a missing X-Amz-Expires is reported as InvalidArgument.
_PRESIGN_REQUIRED = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")


@dataclass(frozen=True)
class SignedRequest:
    """A request as the server saw it on the wire.

    ``raw_path`` is still percent-encoded and has no query; ``query_string`` has no leading
    ``?``. Header names are lower-case, repeated headers already joined with ``,``, values as
    decoded from the wire (latin-1); ``host`` must be present (for HTTP/2, the ``:authority``).
    Non-ASCII characters in ``raw_path`` are taken as UTF-8.
    """

    method: str
    raw_path: str
    query_string: str
    headers: Mapping[str, str]


class CredentialLookup(Protocol):
    """Where secrets come from."""

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret key for ``access_key_id``, or ``None`` if the key is unknown."""
        ...


@dataclass(frozen=True)
class AuthContext:
    """What a verified request proved; the chunk-signature chain is seeded from it."""

    access_key_id: str
    presigned: bool
    payload_hash: str  # x-amz-content-sha256 as signed; UNSIGNED-PAYLOAD when absent or presigned
    amz_date: str  # yyyymmddThhmmssZ
    scope: str  # date/region/s3/aws4_request
    signing_key: bytes = field(repr=False)  # kept out of repr so it never lands in a log line
    seed_signature: str


@dataclass(frozen=True)
class _Credential:
    access_key_id: str
    date: str
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/aws4_request"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def derive_signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """SigV4's ``kSigning`` = HMAC chain over date, region, service and ``aws4_request``."""
    k_date = _hmac(("AWS4" + secret).encode("utf-8"), date)
    return _hmac(_hmac(_hmac(k_date, region), service), "aws4_request")


def _encode(raw: str) -> str:
    """Percent-decode ``raw`` then re-encode per RFC 3986 (unreserved kept, ``%XX`` upper-case).

    ``unquote_to_bytes`` leaves ``+`` alone, which is what we want: on the wire a ``+`` is a
    literal plus (SDKs send spaces as ``%20``). Malformed escapes such as ``%zz`` stay literal
    and are re-encoded as ``%25zz``.
    """
    return quote(unquote_to_bytes(raw), safe="")


def canonical_uri(raw_path: str) -> str:
    """The CanonicalURI of a raw (still encoded) path: each ``/`` segment decoded and re-encoded once.

    No dot-segment or duplicate-slash normalisation: S3 keys may contain ``.``, ``..`` and ``//``.
    """
    if not raw_path:
        return "/"
    return "/".join(_encode(segment) for segment in raw_path.split("/"))


def _query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The raw ``name=value`` pairs of a query string, empties skipped, split at the first ``=``."""
    pairs = []
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


def _decode(raw: str) -> str:
    return unquote_to_bytes(raw).decode("utf-8", errors="replace")


def canonical_query_string(query_string: str, *, presigned: bool = False) -> str:
    """The CanonicalQueryString: pairs decoded, re-encoded (``/`` too) and sorted by name then value.

    For presigned requests the ``X-Amz-Signature`` parameter is left out, as the signer could not
    have included it.
    """
    encoded = sorted(
        (_encode(name), _encode(value))
        for name, value in _query_pairs(query_string)
        if not (presigned and _decode(name) == "X-Amz-Signature")
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def is_presigned(query_string: str) -> bool:
    """Whether the query carries presigned-URL authentication (a decoded ``X-Amz-Algorithm`` name)."""
    return any(_decode(name) == "X-Amz-Algorithm" for name, _ in _query_pairs(query_string))


def has_credentials(req: SignedRequest) -> bool:
    """Whether the request claims an identity at all (non-empty Authorization, or presign params)."""
    return bool(req.headers.get("authorization")) or is_presigned(req.query_string)


def _parse_signed_headers(value: str, error: errors.ErrorKind, message: str) -> list[str]:
    names = value.split(";")
    if any(not name or name != name.strip() for name in names) or len(set(names)) != len(names):
        raise error(message)
    return names


def _parse_credential(value: str, error: errors.ErrorKind, message: str) -> _Credential:
    parts = value.split("/")
    if (
        len(parts) != 5
        or not parts[0]
        or not _SCOPE_DATE.fullmatch(parts[1])
        or not parts[2]
        or parts[3] != "s3"
        or parts[4] != "aws4_request"
    ):
        raise error(message)
    return _Credential(parts[0], parts[1], parts[2])


def _parse_amz_date(value: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(value):
        return None
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    """``name:value\\n`` per signed header, sorted; whitespace runs collapsed; missing → empty."""
    lines = []
    for name in sorted(signed):
        value = headers.get(name.lower(), "")
        lines.append(f"{name.lower()}:{' '.join(value.split())}\n")
    return "".join(lines)


@dataclass(frozen=True)
class _Claim:
    """What the client asserted, parsed but not yet checked against the signature."""

    credential: _Credential
    signed_headers: str
    signature: str
    amz_date: str
    payload_hash: str
    presigned: bool


def _canonical_request(req: SignedRequest, claim: _Claim) -> str:
    return "\n".join(
        (
            req.method.upper(),
            canonical_uri(req.raw_path),
            canonical_query_string(req.query_string, presigned=claim.presigned),
            _canonical_headers(req.headers, claim.signed_headers.split(";")),
            claim.signed_headers,
            claim.payload_hash,
        )
    )


def _authenticate(req: SignedRequest, claim: _Claim, secret: str) -> AuthContext:
    """Recompute the signature ``claim`` should carry; the context if it does, else SignatureDoesNotMatch."""
    credential = claim.credential
    signing_key = derive_signing_key(secret, credential.date, credential.region)
    canonical_hash = hashlib.sha256(_canonical_request(req, claim).encode("utf-8")).hexdigest()
    string_to_sign = "\n".join((ALGORITHM, claim.amz_date, credential.scope, canonical_hash))
    expected = hmac.new(signing_key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    _check_signature(claim.signature, expected)
    return AuthContext(
        access_key_id=credential.access_key_id,
        presigned=claim.presigned,
        payload_hash=claim.payload_hash,
        amz_date=claim.amz_date,
        scope=credential.scope,
        signing_key=signing_key,
        seed_signature=expected,
    )


def _check_signature(provided: str, expected: str) -> None:
    # Constant time, so response timing reveals nothing about how much of a forgery was right.
    if not hmac.compare_digest(provided.encode("utf-8"), expected.encode("ascii")):
        raise errors.SignatureDoesNotMatch()


def _secret(creds: CredentialLookup, access_key_id: str) -> str:
    secret = creds.secret_for(access_key_id)
    if secret is None:
        raise errors.unknown_access_key()
    return secret


def _parse_authorization(value: str) -> tuple[_Credential, str, str]:
    """(credential, SignedHeaders, Signature) from an ``Authorization`` header value."""
    if value.startswith("AWS ") and ":" in value:
        raise errors.InvalidRequest("Please use AWS4-HMAC-SHA256.")
    match = _AUTH_HEADER.fullmatch(value.strip())
    if match is None:
        raise errors.InvalidArgument(_BAD_AUTH_HEADER)
    fields: dict[str, str] = {}
    for part in match.group(1).split(","):
        name, sep, field_value = part.strip().partition("=")
        if not sep or name in fields or name not in ("Credential", "SignedHeaders", "Signature"):
            raise errors.InvalidArgument(_BAD_AUTH_HEADER)
        fields[name] = field_value.strip()
    if len(fields) != 3 or not fields["Signature"]:
        raise errors.InvalidArgument(_BAD_AUTH_HEADER)
    credential = _parse_credential(fields["Credential"], errors.InvalidArgument, _BAD_AUTH_HEADER)
    _parse_signed_headers(fields["SignedHeaders"], errors.InvalidArgument, _BAD_AUTH_HEADER)
    return credential, fields["SignedHeaders"], fields["Signature"]


def _verify_header(req: SignedRequest, creds: CredentialLookup, now: datetime, skew: int) -> AuthContext:
    credential, signed_headers, provided = _parse_authorization(req.headers["authorization"])
    if "host" not in signed_headers.split(";"):
        raise errors.AccessDenied("Host header must be signed")
    secret = _secret(creds, credential.access_key_id)

    amz_date = (req.headers.get("x-amz-date") or req.headers.get("date") or "").strip()
    when = _parse_amz_date(amz_date)
    if when is None:
        raise errors.AccessDenied("AWS authentication requires a valid Date or x-amz-date header")
    if abs(now - when) > timedelta(seconds=skew):
        raise errors.RequestTimeTooSkewed()
    if credential.date != amz_date[:8]:
        raise errors.SignatureDoesNotMatch()

    payload_hash = req.headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD).strip()
    if payload_hash not in _PAYLOAD_LITERALS and not _SHA256_HEX.fullmatch(payload_hash):
        raise errors.InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
            "or a valid sha256 value."
        )

    claim = _Claim(credential, signed_headers, provided, amz_date, payload_hash, presigned=False)
    return _authenticate(req, claim, secret)


def _presign_params(query_string: str) -> dict[str, str]:
    """The decoded presign parameters; each may appear at most once."""
    found: dict[str, str] = {}
    for raw_name, raw_value in _query_pairs(query_string):
        name = _decode(raw_name)
        if name in _PRESIGN_PARAMS:
            if name in found:
                raise errors.InvalidArgument(f"{name} must not be repeated")
            found[name] = _decode(raw_value)
    return found


def _presigned_expires(value: str | None) -> int:
    if value is None:
        raise errors.InvalidArgument("X-Amz-Expires is required for presigned URLs")
    if not _EXPIRES.fullmatch(value):
        raise errors.InvalidArgument("X-Amz-Expires should be a number")
    expires = int(value)
    if expires < 1:
        raise errors.InvalidArgument("X-Amz-Expires must be non-negative and greater than zero")
    if expires > MAX_PRESIGNED_EXPIRES:
        raise errors.InvalidArgument("X-Amz-Expires must be less than a week (in seconds) that is; 604800")
    return expires


def _verify_presigned(req: SignedRequest, creds: CredentialLookup, now: datetime, skew: int) -> AuthContext:
    if req.headers.get("authorization"):
        raise errors.InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
            "or the Authorization header should be specified"
        )
    params = _presign_params(req.query_string)
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise errors.InvalidArgument('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    if any(name not in params for name in _PRESIGN_REQUIRED):
        raise errors.AccessDenied(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
        )
    if "/" not in params["X-Amz-Credential"]:
        raise errors.AccessDenied()
    credential = _parse_credential(
        params["X-Amz-Credential"], errors.InvalidArgument, "Invalid credential scope format"
    )
    signed_headers = params["X-Amz-SignedHeaders"]
    _parse_signed_headers(signed_headers, errors.InvalidArgument, "Invalid X-Amz-SignedHeaders")
    expires = _presigned_expires(params.get("X-Amz-Expires"))
    amz_date = params["X-Amz-Date"]
    when = _parse_amz_date(amz_date)
    if when is None:
        raise errors.InvalidArgument("Invalid X-Amz-Date")
    secret = _secret(creds, credential.access_key_id)

    if when - now > timedelta(seconds=skew):
        raise errors.RequestTimeTooSkewed()
    if now > when + timedelta(seconds=expires):
        raise errors.AccessDenied("Request has expired")
    if "host" not in signed_headers.split(";"):
        raise errors.AccessDenied("Host header must be signed")
    if credential.date != amz_date[:8]:
        raise errors.SignatureDoesNotMatch()

    claim = _Claim(
        credential, signed_headers, params["X-Amz-Signature"], amz_date, UNSIGNED_PAYLOAD, presigned=True
    )
    return _authenticate(req, claim, secret)


def verify(
    req: SignedRequest, creds: CredentialLookup, *, now: datetime, clock_skew_seconds: int = 300
) -> AuthContext:
    """Verify ``req``'s SigV4 signature (header or presigned form) and return what it proved.

    ``now`` should be timezone-aware; a naive value is taken as UTC. Raises ``AccessDenied``
    (no credentials, missing date or presign parameters, unsigned ``host``, expired URL),
    ``InvalidArgument`` / ``InvalidRequest`` (malformed authentication data),
    ``AccessDenied`` (unknown key), ``RequestTimeTooSkewed`` or ``SignatureDoesNotMatch``.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if is_presigned(req.query_string):
        return _verify_presigned(req, creds, now, clock_skew_seconds)
    if not req.headers.get("authorization"):
        raise errors.AccessDenied()
    return _verify_header(req, creds, now, clock_skew_seconds)
