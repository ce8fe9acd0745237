"""Incremental decoder for ``aws-chunked`` request bodies, with the SigV4 chunk-signature chain.

Wire format (``x-amz-content-sha256`` = ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` or
``STREAMING-UNSIGNED-PAYLOAD-TRAILER``)::

    <hex-size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n      (repeated)
    0[;chunk-signature=<64 hex>]\\r\\n                        (final, zero-size chunk)
    <name>:<value>\\r\\n                                      (trailers, trailer variants only)
    x-amz-trailer-signature:<64 hex>\\r\\n                    (signed trailer variant only)
    \\r\\n

The final empty line may be missing when at least one trailer line arrived (some clients end
the body right after the last trailer line).

Signatures (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html and
sigv4-streaming-trailers.html)::

    chunk:   HMAC(kSigning, "AWS4-HMAC-SHA256-PAYLOAD\\n" date "\\n" scope "\\n" previous "\\n"
                            hex(sha256("")) "\\n" hex(sha256(chunk-data)))
    trailer: HMAC(kSigning, "AWS4-HMAC-SHA256-TRAILER\\n" date "\\n" scope "\\n" previous "\\n"
                            hex(sha256(trailer-bytes)))

``previous`` starts as the request (seed) signature and then is each chunk's signature; the
zero-size chunk is signed too. ``trailer-bytes`` are the trailer lines other than
``x-amz-trailer-signature``, in received order, each as ``<lower-case name>:<trimmed value>\\n``.

Checksums carried in trailers are returned, not verified: the caller owns that check.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import Enum, auto

from deltaglider_proxy.s3api import errors
from deltaglider_proxy.s3api.sigv4 import STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, AuthContext

_EMPTY_SHA256_HEX = hashlib.sha256(b"").hexdigest()
_SIGNATURE_EXTENSION = b"chunk-signature="
_TRAILER_SIGNATURE = "x-amz-trailer-signature"
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
# Trailer lines follow HTTP field syntax: a token name, then printable ASCII (no CR, LF or controls).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[\x20-\x7e\t]*")
# A chunk header is ~90 bytes and a trailer line well under 200; the caps bound what one line
# can make us buffer when a client never sends the line break.
MAX_LINE = 4096
MAX_TRAILER_BYTES = 16 * 1024
_DECODE_FAILED = "Failed to decode AWS chunked transfer encoding"


def _framing_error() -> errors.S3Error:
    return errors.InvalidArgument(_DECODE_FAILED)


class ChunkSigner:
    """Checks the signature chain of a signed streaming body, seeded from the request signature.

    One signer serves one body: each successful :meth:`verify_chunk` advances the chain.
    """

    def __init__(self, auth: AuthContext) -> None:
        if auth.payload_hash not in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER):
            raise ValueError(f"request was not signed for a streaming payload: {auth.payload_hash!r}")
        self._key = auth.signing_key
        self._date_and_scope = f"{auth.amz_date}\n{auth.scope}\n"
        self._previous = auth.seed_signature

    def _sign(self, string_to_sign: str) -> str:
        return hmac.new(self._key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()

    def chunk_signature(self, chunk_sha256_hex: str) -> str:
        """The signature the next chunk must carry, given the hex SHA-256 of its data."""
        return self._sign(
            f"AWS4-HMAC-SHA256-PAYLOAD\n{self._date_and_scope}{self._previous}\n"
            f"{_EMPTY_SHA256_HEX}\n{chunk_sha256_hex}"
        )

    def trailer_signature(self, trailer_bytes: bytes) -> str:
        """The signature the trailer must carry, given its canonical bytes (see module docstring)."""
        digest = hashlib.sha256(trailer_bytes).hexdigest()
        return self._sign(f"AWS4-HMAC-SHA256-TRAILER\n{self._date_and_scope}{self._previous}\n{digest}")

    def verify_chunk(self, chunk_sha256_hex: str, signature: str | None) -> None:
        """Check the next chunk's signature (``None`` = missing) and advance the chain."""
        expected = self.chunk_signature(chunk_sha256_hex)
        _check(signature, expected)
        self._previous = expected

    def verify_trailer(self, trailer_bytes: bytes, signature: str | None) -> None:
        """Check the trailer signature (``None`` = missing); it ends the chain."""
        _check(signature, self.trailer_signature(trailer_bytes))


def _check(provided: str | None, expected: str) -> None:
    # Constant-time compare; a missing signature fails the same way as a wrong one.
    if provided is None or not hmac.compare_digest(provided.encode("utf-8"), expected.encode("ascii")):
        raise errors.SignatureDoesNotMatch()


class _State(Enum):
    HEADER = auto()  # reading a chunk-size line
    DATA = auto()  # inside a chunk's data
    DATA_END = auto()  # expecting the CRLF after a chunk's data
    TRAILER = auto()  # after the zero-size chunk: trailer lines until an empty line
    DONE = auto()


class AwsChunkedDecoder:
    """Decodes an aws-chunked body fed in arbitrary slices; linear time, bounded memory.

    With a ``signer`` every chunk must carry a valid ``chunk-signature`` and chunk data is only
    released once its signature has been checked, so at most one chunk (``max_chunk_size``)
    plus one line is held. Without a signer chunk extensions are ignored, data streams
    straight through and an ``x-amz-trailer-signature`` line is dropped unchecked.
    ``expect_trailer`` says whether trailer lines may follow the final chunk (and, with a
    signer, that an ``x-amz-trailer-signature`` must close them).

    ``decoded_length`` counts the payload bytes :meth:`feed` has returned so far.

    Errors: malformed framing, an oversized chunk or line, or bytes after the end →
    ``InvalidArgument``; a body that stops early → ``IncompleteBody`` (from :meth:`finish`);
    a missing or wrong chunk/trailer signature → ``SignatureDoesNotMatch``. After an error
    the decoder keeps raising it.
    """

    def __init__(
        self, *, signer: ChunkSigner | None, expect_trailer: bool, max_chunk_size: int = 16 * 1024 * 1024
    ) -> None:
        self._signer = signer
        self._expect_trailer = expect_trailer
        self._max_chunk_size = max_chunk_size
        self._state = _State.HEADER
        self._line = bytearray()
        self._remaining = 0  # data bytes still due in the current chunk
        self._crlf_seen = 0  # bytes of the post-data CRLF already matched
        self._chunk_signature: str | None = None
        self._chunk_hash = hashlib.sha256()
        self._pending = bytearray()  # data of the current chunk, awaiting its signature check
        self._trailers: dict[str, str] = {}
        self._trailer_bytes = bytearray()  # canonical form of the trailers, for the signature
        self._trailer_signature: str | None = None
        self._trailer_lines = 0
        self._error: errors.S3Error | None = None
        self.decoded_length = 0  # payload bytes returned by feed() so far

    def feed(self, data: bytes) -> list[bytes]:
        """Consume the next slice of the body; returns the payload pieces now available."""
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        try:
            self._consume(data, out)
        except errors.S3Error as error:
            self._error = error
            raise
        return out

    def finish(self) -> dict[str, str]:
        """Declare the end of the body; returns the trailers (lower-case names, trimmed values).

        Raises ``IncompleteBody`` if the body stopped before its end, or the signature error if
        a signed trailer never got its signature.
        """
        if self._error is not None:
            raise self._error
        try:
            ended_on_line = self._state is _State.TRAILER and not self._line
            if ended_on_line and (self._trailer_lines or not self._expect_trailer):
                # The body ended right after a complete trailer line (or after the final chunk
                # when no trailer was expected): accepted without the closing empty line. With
                # no trailer line at all where one was expected, the body was cut short.
                self._end_trailers()
            if self._state is not _State.DONE:
                raise errors.IncompleteBody()
        except errors.S3Error as error:
            self._error = error
            raise
        return dict(self._trailers)

    def _consume(self, data: bytes, out: list[bytes]) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, end - pos)
                self._on_data(view[pos : pos + take], out)
                pos += take
            elif state is _State.DATA_END:
                if data[pos] != b"\r\n"[self._crlf_seen]:
                    raise _framing_error()
                pos += 1
                self._crlf_seen += 1
                if self._crlf_seen == 2:
                    self._crlf_seen = 0
                    self._state = _State.HEADER
            elif state is _State.DONE:
                raise _framing_error()
            else:
                # Search no further than a line may reach, so an endless line costs O(MAX_LINE).
                limit = min(end, pos + MAX_LINE - len(self._line))
                newline = data.find(b"\n", pos, limit)
                if newline < 0 and limit < end:
                    raise _framing_error()
                stop = limit if newline < 0 else newline + 1
                self._line += view[pos:stop]
                pos = stop
                if newline >= 0:
                    self._on_line()

    def _on_line(self) -> None:
        raw = bytes(self._line)
        self._line.clear()
        if not raw.endswith(b"\r\n"):
            raise _framing_error()
        line = raw[:-2]
        if self._state is _State.HEADER:
            self._on_chunk_header(line)
        else:
            self._on_trailer_line(line)

    def _on_chunk_header(self, line: bytes) -> None:
        size_text, _, extension = line.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _framing_error()
        size = int(size_text, 16)
        if size > self._max_chunk_size:
            raise _framing_error()
        if self._signer is not None:
            # Only ";chunk-signature=<sig>" is allowed; anything else fails as a bad signature.
            if extension.startswith(_SIGNATURE_EXTENSION):
                self._chunk_signature = extension[len(_SIGNATURE_EXTENSION) :].decode("latin-1")
            else:
                self._chunk_signature = None
        if size == 0:
            if self._signer is not None:
                self._signer.verify_chunk(_EMPTY_SHA256_HEX, self._chunk_signature)
            self._state = _State.TRAILER
        else:
            self._remaining = size
            self._state = _State.DATA

    def _on_data(self, piece: memoryview, out: list[bytes]) -> None:
        self._remaining -= len(piece)
        if self._signer is None:
            out.append(bytes(piece))
            self.decoded_length += len(piece)
        else:
            # One growing buffer (amortised linear) rather than a list of slices, which would
            # cost far more than the chunk itself when the body arrives a byte at a time.
            self._chunk_hash.update(piece)
            self._pending += piece
        if self._remaining:
            return
        if self._signer is not None:
            self._signer.verify_chunk(self._chunk_hash.hexdigest(), self._chunk_signature)
            self._chunk_hash = hashlib.sha256()
            out.append(bytes(self._pending))
            self.decoded_length += len(self._pending)
            self._pending.clear()
        self._state = _State.DATA_END

    def _on_trailer_line(self, line: bytes) -> None:
        if not line:
            self._end_trailers()
            return
        # Trailers only where the variant allows them, and nothing after the trailer signature.
        if not self._expect_trailer or self._trailer_signature is not None:
            raise _framing_error()
        name_bytes, colon, value_bytes = line.partition(b":")
        value_bytes = value_bytes.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name_bytes) or not _FIELD_VALUE.fullmatch(value_bytes):
            raise _framing_error()
        name, value = name_bytes.decode("ascii").lower(), value_bytes.decode("ascii")
        if name in self._trailers:
            raise _framing_error()
        self._trailer_lines += 1
        if name == _TRAILER_SIGNATURE:
            self._trailer_signature = value
            return
        self._trailers[name] = value
        self._trailer_bytes += f"{name}:{value}\n".encode("ascii")
        if len(self._trailer_bytes) > MAX_TRAILER_BYTES:
            raise _framing_error()

    def _end_trailers(self) -> None:
        if self._signer is not None and self._expect_trailer:
            self._signer.verify_trailer(bytes(self._trailer_bytes), self._trailer_signature)
        self._state = _State.DONE
