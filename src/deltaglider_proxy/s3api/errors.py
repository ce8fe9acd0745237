"""The one S3 error vocabulary.

Inner layers raise :class:`S3Error` (or one of the named constructors below); only
:func:`render_error` turns an error into the XML body a client sees. Messages are
client-safe: internal details go to the server log, never into an error body.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

INTERNAL_MESSAGE = "Internal server error. See server logs for details."


class S3Error(Exception):
    """An S3 protocol error: a code, an HTTP status and a client-safe message."""

    def __init__(
        self,
        code: str,
        status: int,
        message: str,
        *,
        resource: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.resource = resource
        self.headers = headers or {}
        # Why, for metrics and logs only, when one client-facing code covers several causes.
        self.reason = ""


class ErrorKind:
    """One S3 error code; calling it builds the exception to raise."""

    def __init__(self, code: str, status: int, default_message: str) -> None:
        self.code = code
        self.status = status
        self.default_message = default_message

    def __call__(self, message: str | None = None, *, resource: str = "") -> S3Error:
        return S3Error(self.code, self.status, message or self.default_message, resource=resource)

    def matches(self, error: BaseException) -> bool:
        return isinstance(error, S3Error) and error.code == self.code


_make = ErrorKind


AccessDenied = _make("AccessDenied", 403, "Access Denied")
BadDigest = _make(
    "BadDigest", 400, "The Content-MD5 or checksum you specified did not match what we received."
)
BucketAlreadyExists = _make("BucketAlreadyExists", 409, "The requested bucket name is not available.")
BucketAlreadyOwnedByYou = _make(
    "BucketAlreadyOwnedByYou", 409, "Your previous request to create the named bucket succeeded."
)
BucketNotEmpty = _make("BucketNotEmpty", 409, "The bucket you tried to delete is not empty.")
EntityTooLarge = _make("EntityTooLarge", 413, "Your proposed upload exceeds the maximum allowed object size.")
EntityTooSmall = _make(
    "EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size."
)
IncompleteBody = _make(
    "IncompleteBody", 400, "You did not provide the number of bytes specified by the Content-Length."
)
InternalError = _make("InternalError", 500, INTERNAL_MESSAGE)
InvalidAccessKeyId = _make(
    "InvalidAccessKeyId", 403, "The AWS access key ID you provided does not exist in our records."
)
InvalidArgument = _make("InvalidArgument", 400, "Invalid Argument")


def unknown_access_key() -> S3Error:
    """An access key nobody has: answered as ``AccessDenied`` like a wrong signature, so the answer
    does not tell which keys exist (control-plane.md §2.4.4 [D]); ``reason`` keeps the cause."""
    error = AccessDenied()
    error.reason = "invalid_access_key"
    return error


InvalidBucketName = _make("InvalidBucketName", 400, "The specified bucket is not valid.")
InvalidDigest = _make("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
InvalidPart = _make(
    "InvalidPart", 400, "One or more of the specified parts could not be found or did not match."
)
InvalidPartOrder = _make("InvalidPartOrder", 400, "The list of parts was not in ascending order.")
InvalidRange = _make("InvalidRange", 416, "The requested range is not satisfiable.")
InvalidRequest = _make("InvalidRequest", 400, "Invalid Request")
KeyTooLongError = _make("KeyTooLongError", 400, "Your key is too long.")
MalformedXML = _make("MalformedXML", 400, "The XML you provided was not well-formed or did not validate.")
MethodNotAllowed = _make(
    "MethodNotAllowed", 405, "The specified method is not allowed against this resource."
)
MissingContentLength = _make("MissingContentLength", 411, "You must provide the Content-Length HTTP header.")
MetadataTooLarge = _make(
    "MetadataTooLarge", 400, "Your metadata headers exceed the maximum allowed metadata size."
)
NoSuchBucket = _make("NoSuchBucket", 404, "The specified bucket does not exist.")
NoSuchKey = _make("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _make(
    "NoSuchUpload",
    404,
    "The specified multipart upload does not exist. The upload ID may be invalid, "
    "or the upload may have been aborted or completed.",
)
NotImplementedOp = _make(
    "NotImplemented", 501, "A header or query you provided implies functionality that is not implemented."
)
PreconditionFailed = _make(
    "PreconditionFailed", 412, "At least one of the preconditions you specified did not hold."
)
RequestTimeTooSkewed = _make(
    "RequestTimeTooSkewed",
    403,
    "The difference between the request time and the server's time is too large.",
)
ServiceUnavailable = _make("ServiceUnavailable", 503, "Please reduce your request rate.")
SignatureDoesNotMatch = _make(
    "SignatureDoesNotMatch",
    403,
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method.",
)
SlowDown = _make("SlowDown", 503, "Please reduce your request rate.")
XAmzContentSHA256Mismatch = _make(
    "XAmzContentSHA256Mismatch",
    400,
    "The provided 'x-amz-content-sha256' header does not match what was computed.",
)
RequestHeaderSectionTooLarge = _make(
    "RequestHeaderSectionTooLarge", 400, "Your request header section exceeds the maximum allowed size."
)


def render_error(error: S3Error, request_id: str) -> bytes:
    """The XML body of an S3 error response (``Resource`` only where S3 fills it)."""
    resource = escape(error.resource) if error.code in ("NoSuchKey", "NoSuchBucket", "NoSuchUpload") else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Error>"
        f"<Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message>"
        f"<Resource>{resource}</Resource>"
        f"<RequestId>{escape(request_id)}</RequestId>"
        "</Error>"
    ).encode()
