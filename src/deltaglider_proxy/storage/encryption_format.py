"""Byte-exact proxy-AES wire formats and key handling (storage.md §11.2–§11.5), free of I/O.

Two formats exist on backends, named by the ``dg-encrypted`` marker:

* ``aes-256-gcm-v1`` (single-shot): ``IV(12) || ciphertext || tag(16)``, no AAD;
* ``aes-256-gcm-chunked-v1``: a 16-byte header ``"DGE1" || base_iv(12)`` followed by frames
  ``len (u32 LE) || ciphertext_i || tag_i``, one per 65 536-byte plaintext chunk. Each frame's
  nonce is ``base_iv XOR i`` and its 16-byte AAD binds the magic, the index and whether it is the
  final chunk, so reordering, dropping, truncating or tampering fails authentication.

The streaming classes here hold at most one partial frame of their own (plus whatever piece the
caller hands them), never the whole object, and do all byte work in C: slicing, ``struct`` and
one ``AESGCM`` call per 64 KiB chunk (which releases the GIL).

Everything read-side raises :class:`EncryptionError` subclasses (a :class:`StorageError`, so the
edge answers ``500 InternalError``); messages name key ids, never key bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deltaglider_proxy.storage.base import StorageError

log = logging.getLogger(__name__)

# --- markers (§11.4) ---------------------------------------------------------------------------

MARKER_KEY = "dg-encrypted"
KEY_ID_KEY = "dg-encryption-key-id"
MARKER_SINGLE_SHOT = "aes-256-gcm-v1"
MARKER_CHUNKED = "aes-256-gcm-chunked-v1"
NATIVE_MARKER_KEY = "dg-encrypted-native"
NATIVE_SSE_KMS = "sse-kms"
NATIVE_SSE_S3 = "sse-s3"


@dataclass(frozen=True)
class ServerSideEncryption:
    """The native modes of storage.md §11.1: the service encrypts, the proxy never sees keys."""

    mode: Literal["sse-s3", "sse-kms"]
    kms_key_id: str | None = None
    bucket_key_enabled: bool = True


# --- format constants (§11.3) ------------------------------------------------------------------

KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
SINGLE_SHOT_OVERHEAD = IV_SIZE + TAG_SIZE
MAGIC = b"DGE1"
HEADER_SIZE = len(MAGIC) + IV_SIZE
CHUNK_SIZE = 65_536
LEN_SIZE = 4
FULL_FRAME_SIZE = LEN_SIZE + CHUNK_SIZE + TAG_SIZE
# Upstream's anti-DoS cap on a declared frame length: a garbage length field must not make the
# reader buffer gigabytes before authentication can fail.
MAX_FRAME_LEN = CHUNK_SIZE + TAG_SIZE + 1_024
MAX_CHUNKS = 2**32
MAX_PLAINTEXT_SIZE = MAX_CHUNKS * CHUNK_SIZE

DECRYPTION_FAILED = "decryption failed (wrong key or tampered data)"
NO_KEY_CONFIGURED = "object is encrypted but no key is configured"
UNMARKED_CIPHERTEXT = (
    "object body begins with chunked-encryption magic but metadata has no dg-encrypted marker — "
    "xattrs may have been stripped during backup/restore. Refusing to serve ciphertext as plaintext."
)

_LEN = struct.Struct("<I")
# "DGE1" || i (u32 LE) || final flag (1 byte) || 7 zero bytes = 16 bytes. The upstream doc says
# 12 bytes with three zeros; the upstream code (and so every stored object) uses this layout.
_AAD = struct.Struct("<4sIB7x")
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
LEGACY_NAME_SUFFIX = "::legacy"


# --- errors ------------------------------------------------------------------------------------


class EncryptionError(StorageError):
    """Any failure of the proxy-AES layer; surfaces as 500 InternalError, details in logs."""


class EncryptionKeyError(EncryptionError):
    """No configured key can decrypt an object with the stamped key id."""


class DecryptionError(EncryptionError):
    """Stored bytes that do not authenticate under the chosen key."""


class MalformedCiphertext(DecryptionError):
    """Stored bytes that are not the declared format at all (magic, lengths, truncation)."""


class PlaintextSizeMismatch(EncryptionError):
    """The encryptor was fed a different number of bytes than it was told to expect."""


class UnmarkedCiphertext(EncryptionError):
    """An object without a marker whose body is chunked ciphertext (§11.5 step 3)."""


# --- keys and key ids (§11.2) ------------------------------------------------------------------


def parse_key(text: str) -> bytes:
    """Decode a configured 256-bit key given as 64 hex chars or as base64 of exactly 32 bytes.

    The two forms cannot be confused: 32 bytes are 64 hex chars but 44 base64 chars (43
    unpadded). Surrounding whitespace is ignored (env files often end with a newline). Error
    messages describe the shape of the input, never its content.
    """
    text = text.strip()
    if not text:
        raise ValueError("key is empty; key must be 32 bytes (64 hex chars or base64 of 32 bytes)")
    if all(c in _HEX_DIGITS for c in text):
        if len(text) == 2 * KEY_SIZE:
            return bytes.fromhex(text)
        # 43 hex-looking chars could still be unpadded base64; anything else is a bad hex key.
        if len(text) != 43:
            raise ValueError(f"key must be 32 bytes (64 hex chars); got {len(text)} hex chars")
    elif len(text) == 2 * KEY_SIZE:
        # 64 chars is never base64 of 32 bytes: this is a hex key with a typo in it.
        raise ValueError("invalid hex key: 64 chars but not all are hex digits")
    try:
        # Standard or URL-safe alphabet, padding optional; validate=True rejects stray chars.
        normalized = text.replace("-", "+").replace("_", "/")
        decoded = base64.b64decode(normalized + "=" * (-len(normalized) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "invalid key: neither 64 hex chars nor base64; key must be 32 bytes (64 hex chars)"
        ) from None
    if len(decoded) != KEY_SIZE:
        raise ValueError(f"key must be 32 bytes (64 hex chars); base64 decodes to {len(decoded)} bytes")
    return decoded


def derive_key_id(backend_name: str, key: bytes) -> str:
    """The key id stamped when none is configured: 16 hex of SHA-256(name || 0x00 || key)[:8].

    The backend name is hashed in so the same key bytes on two backends give different ids
    (objects are not accidentally portable between backends).
    """
    _check_key(key)
    return hashlib.sha256(backend_name.encode("utf-8") + b"\x00" + key).digest()[:8].hex()


def derive_legacy_key_id(backend_name: str, legacy_key: bytes) -> str:
    """The derived id of a legacy key: the same derivation under the name ``<name>::legacy``."""
    return derive_key_id(backend_name + LEGACY_NAME_SUFFIX, legacy_key)


def is_valid_key_id(key_id: str) -> bool:
    """Whether an explicit key id has the recommended shape (violations are only warned)."""
    return _KEY_ID_RE.fullmatch(key_id) is not None


@dataclass(frozen=True)
class LegacyKey:
    """The one previous key generation kept for reads (the legacy shim)."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyRing:
    """The keys one backend can decrypt with, and the §11.5 rules for choosing among them.

    ``primary_key_id`` may be set without ``primary_key`` (proxy mode declaring a ``key_id`` but
    no key yet): then objects stamped with that id fail with a clear "no key" error instead of a
    mismatch. Build it with :meth:`build`, which derives missing ids.
    """

    backend_name: str
    primary_key_id: str | None = None
    primary_key: bytes | None = field(default=None, repr=False)
    legacy: LegacyKey | None = None
    # Older generations kept for reads (``previous_keys``, our extension of the one legacy slot):
    # an object stamped with one of these ids is decrypted with its key, never written with it.
    previous: tuple[LegacyKey, ...] = ()

    @classmethod
    def build(
        cls,
        backend_name: str,
        *,
        key: bytes | None = None,
        key_id: str | None = None,
        legacy_key: bytes | None = None,
        legacy_key_id: str | None = None,
        previous: Sequence[tuple[bytes, str | None]] = (),
    ) -> KeyRing:
        """Assemble a ring from configured values; a ``legacy_key_id`` without key is ignored.

        ``previous`` holds (key, key_id) pairs; a missing id is derived as for a *primary* key
        (not the ``::legacy`` derivation), so moving the active key into ``previous`` keeps
        matching the id stamped on the objects it wrote.
        """
        if key is not None:
            _check_key(key)
            key_id = key_id or derive_key_id(backend_name, key)
        legacy = None
        if legacy_key is not None:
            _check_key(legacy_key)
            legacy = LegacyKey(legacy_key_id or derive_legacy_key_id(backend_name, legacy_key), legacy_key)
        older = []
        for old_key, old_id in previous:
            _check_key(old_key)
            older.append(LegacyKey(old_id or derive_key_id(backend_name, old_key), old_key))
        return cls(backend_name, key_id or None, key, legacy, tuple(older))

    @property
    def known_ids(self) -> tuple[str, ...]:
        """Every key id this ring can decrypt (for messages; never key bytes)."""
        ids = [self.primary_key_id] if self.primary_key is not None and self.primary_key_id else []
        ids += [self.legacy.key_id] if self.legacy is not None else []
        return tuple(ids + [old.key_id for old in self.previous])

    def key_for(self, stamped_id: str | None) -> bytes:
        """The key for an object whose ``dg-encryption-key-id`` is ``stamped_id`` (None: absent)."""
        if stamped_id is None:
            # Objects from before key ids existed can only have been written with the primary key.
            if self.primary_key is not None:
                return self.primary_key
            raise EncryptionKeyError(f"{NO_KEY_CONFIGURED} (backend {self.backend_name!r})")
        if self.primary_key_id is not None and stamped_id == self.primary_key_id:
            if self.primary_key is not None:
                return self.primary_key
            raise EncryptionKeyError(
                f"{NO_KEY_CONFIGURED} (backend {self.backend_name!r} declares key id "
                f"{stamped_id!r} but has no key bytes for it)"
            )
        if self.legacy is not None and stamped_id == self.legacy.key_id:
            return self.legacy.key
        for old in self.previous:
            if stamped_id == old.key_id:
                return old.key
        if self.primary_key is None and self.primary_key_id is None:
            legacy_note = f"; its legacy key id is {self.legacy.key_id!r}" if self.legacy else ""
            if self.previous:
                legacy_note += f"; previous key ids {[old.key_id for old in self.previous]}"
            raise EncryptionKeyError(
                f"object was encrypted with key id {stamped_id!r}, but backend {self.backend_name!r} "
                f"has NO encryption key configured{legacy_note} — configure the key that wrote it "
                f"(as key, or as legacy_key with legacy_key_id={stamped_id!r})"
            )
        legacy_note = f" (legacy key id {self.legacy.key_id!r})" if self.legacy else ""
        if self.previous:
            legacy_note += f" (previous key ids {[old.key_id for old in self.previous]})"
        raise EncryptionKeyError(
            f"object was encrypted with key id {stamped_id!r}, but this backend is configured with "
            f"key id {self.primary_key_id!r} (no legacy-shim match either{legacy_note}) — if the "
            f"object was written under an older key, set legacy_key and legacy_key_id={stamped_id!r}"
        )


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"key must be 32 bytes (64 hex chars); got {len(key)} bytes")


# --- unmarked-object guard (§11.5 step 3) ------------------------------------------------------


def starts_with_chunked_magic(prefix: bytes | bytearray | memoryview) -> bool:
    """Whether a body's first bytes are the chunked-format magic ``DGE1``."""
    return bytes(prefix[: len(MAGIC)]) == MAGIC


def refuse_unmarked_ciphertext(first_chunk: bytes | bytearray | memoryview) -> None:
    """Raise :class:`UnmarkedCiphertext` when an unmarked object's first chunk starts with DGE1.

    Call it with the first chunk a passthrough read emits (a chunk shorter than 4 bytes cannot
    carry the magic; a chunked object is at least 36 bytes, so a reader that got fewer than 4
    bytes first may look at the first 4 bytes instead). The single-shot format has no magic, so
    single-shot objects whose markers were stripped cannot be detected this way.
    """
    if starts_with_chunked_magic(first_chunk):
        raise UnmarkedCiphertext(UNMARKED_CIPHERTEXT)


# --- single-shot aes-256-gcm-v1 ----------------------------------------------------------------


def encrypt_single_shot(key: bytes, plaintext: bytes, *, iv: bytes | None = None) -> bytes:
    """``IV || ciphertext || tag`` with a random IV (``iv`` is injectable for test vectors)."""
    _check_key(key)
    iv = secrets.token_bytes(IV_SIZE) if iv is None else iv
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    return iv + AESGCM(key).encrypt(iv, plaintext, None)


def decrypt_single_shot(key: bytes, blob: bytes | bytearray | memoryview) -> bytes:
    """Authenticate and decrypt a whole single-shot blob."""
    _check_key(key)
    if len(blob) < SINGLE_SHOT_OVERHEAD:
        raise MalformedCiphertext(
            f"encrypted object is {len(blob)} bytes; the {MARKER_SINGLE_SHOT} format needs at least "
            f"{SINGLE_SHOT_OVERHEAD}"
        )
    view = memoryview(blob)
    try:
        return AESGCM(key).decrypt(view[:IV_SIZE], view[IV_SIZE:], None)
    except InvalidTag:
        raise DecryptionError(DECRYPTION_FAILED) from None


# --- chunked aes-256-gcm-chunked-v1: sizes and range planning ----------------------------------


def chunk_count(plaintext_size: int) -> int:
    """Frames in an object: an empty object still has one (empty) frame."""
    _check_size(plaintext_size)
    return max(1, -(-plaintext_size // CHUNK_SIZE))


def final_chunk_index(plaintext_size: int) -> int:
    return chunk_count(plaintext_size) - 1


def chunk_length(plaintext_size: int, index: int) -> int:
    """Plaintext bytes in chunk ``index``: full except the final one, which holds the rest."""
    final = final_chunk_index(plaintext_size)
    if not 0 <= index <= final:
        raise ValueError(f"chunk index {index} outside 0..{final}")
    return CHUNK_SIZE if index < final else plaintext_size - final * CHUNK_SIZE


def frame_offset(index: int) -> int:
    """Wire offset of frame ``index`` (every earlier frame is full)."""
    return HEADER_SIZE + index * FULL_FRAME_SIZE


def chunked_wire_size(plaintext_size: int) -> int:
    """Stored size of a chunked object: header + per-frame length and tag + the plaintext."""
    return HEADER_SIZE + chunk_count(plaintext_size) * (LEN_SIZE + TAG_SIZE) + plaintext_size


class RangePlan(NamedTuple):
    """What to fetch and keep for plaintext ``[start, end)`` of a chunked object.

    Fetch the header (wire 0–15) and wire ``[wire_start, wire_end)``; decrypt frames from
    ``first_chunk_index`` on; drop ``skip_head_bytes`` of their plaintext and keep ``take_bytes``.
    When the range reaches the final frame, ``wire_end`` equals :func:`chunked_wire_size`, so a
    reader may equally fetch to EOF (trailing bytes are then only warned about).
    """

    wire_start: int
    wire_end: int
    first_chunk_index: int
    skip_head_bytes: int
    take_bytes: int

    @property
    def last_chunk_index(self) -> int:
        return (
            self.first_chunk_index * CHUNK_SIZE + self.skip_head_bytes + self.take_bytes - 1
        ) // CHUNK_SIZE


def plan_range(plaintext_size: int, start: int, end_exclusive: int) -> RangePlan:
    """Plan a read of plaintext ``[start, end_exclusive)``, a non-empty range inside the object."""
    _check_size(plaintext_size)
    if not 0 <= start < end_exclusive <= plaintext_size:
        raise ValueError(f"range [{start}, {end_exclusive}) is not a non-empty part of 0..{plaintext_size}")
    first = start // CHUNK_SIZE
    last = (end_exclusive - 1) // CHUNK_SIZE
    wire_end = frame_offset(last) + LEN_SIZE + chunk_length(plaintext_size, last) + TAG_SIZE
    return RangePlan(frame_offset(first), wire_end, first, start - first * CHUNK_SIZE, end_exclusive - start)


def _check_size(plaintext_size: int) -> None:
    if not 0 <= plaintext_size <= MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext size {plaintext_size} outside 0..{MAX_PLAINTEXT_SIZE}")


# --- chunked: nonces, AAD, header --------------------------------------------------------------


class _FrameCrypto:
    """Per-object AES-GCM state: the cipher, and nonce/AAD for frame ``i``."""

    __slots__ = ("aead", "final", "iv_head", "iv_tail")

    def __init__(self, key: bytes, base_iv: bytes, final: int) -> None:
        _check_key(key)
        self.aead = AESGCM(key)
        self.final = final
        # The XOR only touches the last 4 bytes: i < 2^32, so base_iv XOR i (96-bit) is the same.
        self.iv_head = base_iv[:8]
        self.iv_tail = int.from_bytes(base_iv[8:], "big")

    def nonce(self, index: int) -> bytes:
        return self.iv_head + (self.iv_tail ^ index).to_bytes(4, "big")

    def aad(self, index: int) -> bytes:
        return _AAD.pack(MAGIC, index, 1 if index == self.final else 0)

    def open(self, index: int, sealed: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt the body (ciphertext || tag) of frame ``index``."""
        try:
            return self.aead.decrypt(self.nonce(index), sealed, self.aad(index))
        except InvalidTag:
            raise DecryptionError(f"{DECRYPTION_FAILED} in frame {index}") from None


def _check_frame_length(index: int, declared: int, plaintext_size: int) -> None:
    """Refuse a frame whose length field is not the one ``plaintext_size`` implies, before a
    byte of it is buffered or decrypted."""
    if declared > MAX_FRAME_LEN:
        raise MalformedCiphertext(
            f"frame {index} declares {declared} bytes, above the {MAX_FRAME_LEN}-byte limit"
        )
    expected = chunk_length(plaintext_size, index) + TAG_SIZE
    if declared != expected:
        raise MalformedCiphertext(
            f"frame {index} declares {declared} bytes but {expected} are expected for a "
            f"{plaintext_size}-byte object (wrong file_size, or the frames were tampered with)"
        )


def _truncated(where: str, last: int, plaintext_size: int) -> MalformedCiphertext:
    return MalformedCiphertext(
        f"chunked object truncated: input ended inside {where} "
        f"(frames up to {last} expected for {plaintext_size} plaintext bytes)"
    )


def make_header(base_iv: bytes) -> bytes:
    if len(base_iv) != IV_SIZE:
        raise ValueError(f"base IV must be {IV_SIZE} bytes")
    return MAGIC + base_iv


def parse_header(header: bytes | bytearray | memoryview) -> bytes:
    """The base IV of a chunked header; :class:`MalformedCiphertext` unless it starts with DGE1."""
    if len(header) < HEADER_SIZE:
        raise MalformedCiphertext(f"chunked object ends inside its {HEADER_SIZE}-byte header")
    if bytes(header[: len(MAGIC)]) != MAGIC:
        raise MalformedCiphertext(f"chunked object does not start with the {MAGIC.decode()} magic")
    return bytes(header[len(MAGIC) : HEADER_SIZE])


# --- chunked: streaming encryptor --------------------------------------------------------------


class ChunkedEncryptor:
    """Turns plaintext fed in arbitrary pieces into ``aes-256-gcm-chunked-v1`` wire bytes.

    The total ``plaintext_size`` must be known up front because the final chunk's AAD carries a
    final flag. :meth:`update` returns the wire pieces that became ready, in order (the 16-byte
    header first, then one piece per frame); :meth:`finish` returns the rest and checks the total.
    Only a partial chunk (< 64 KiB) is held between calls. Pieces stay frame-sized on purpose:
    joining them into one large buffer per call costs a fresh allocation (mmap and page faults)
    that made 1 MiB feeds several times slower than AES itself. ``base_iv`` is for test vectors only:
    reusing a base IV under the same key reuses GCM nonces and breaks confidentiality.
    """

    def __init__(self, key: bytes, plaintext_size: int, *, base_iv: bytes | None = None) -> None:
        base_iv = secrets.token_bytes(IV_SIZE) if base_iv is None else base_iv
        self._header = make_header(base_iv)
        self._size = plaintext_size
        self._crypto = _FrameCrypto(key, base_iv, final_chunk_index(plaintext_size))
        self._fed = 0
        self._index = 0
        self._pending = bytearray()
        self._header_sent = False
        self._finished = False

    @property
    def wire_size(self) -> int:
        return chunked_wire_size(self._size)

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._finished:
            raise RuntimeError("ChunkedEncryptor.update after finish")
        size = len(data)
        if self._fed + size > self._size:
            self._finished = True
            raise PlaintextSizeMismatch(
                f"plaintext exceeds the declared {self._size} bytes (got at least {self._fed + size})"
            )
        self._fed += size
        out: list[bytes] = []
        if not self._header_sent:
            out.append(self._header)
            self._header_sent = True
        view = memoryview(data).cast("B") if size else memoryview(b"")
        pos = 0
        all_in = self._fed == self._size
        if self._pending:
            take = min(CHUNK_SIZE - len(self._pending), size)
            self._pending += view[:take]
            pos = take
            if len(self._pending) == CHUNK_SIZE or (all_in and pos == size):
                self._seal(self._pending, out)
                self._pending = bytearray()
        # Whole chunks straight from the caller's buffer: no copy before AES.
        while size - pos >= CHUNK_SIZE:
            self._seal(view[pos : pos + CHUNK_SIZE], out)
            pos += CHUNK_SIZE
        if pos < size:
            if all_in:
                self._seal(view[pos:], out)
            else:
                self._pending += view[pos:]
        return out

    def finish(self) -> list[bytes]:
        if self._finished:
            raise RuntimeError("ChunkedEncryptor.finish called twice or after an error")
        self._finished = True
        if self._fed != self._size:
            raise PlaintextSizeMismatch(f"plaintext is {self._fed} bytes but {self._size} were declared")
        out: list[bytes] = []
        if not self._header_sent:
            out.append(self._header)
            self._header_sent = True
        if self._size == 0:
            self._seal(b"", out)
        return out

    def _seal(self, chunk: bytes | bytearray | memoryview, out: list[bytes]) -> None:
        index = self._index
        crypto = self._crypto
        sealed = crypto.aead.encrypt(crypto.nonce(index), chunk, crypto.aad(index))
        out.append(b"".join((_LEN.pack(len(sealed)), sealed)))
        self._index = index + 1


def encrypt_chunked(key: bytes, plaintext: bytes, *, base_iv: bytes | None = None) -> bytes:
    """Whole-buffer convenience over :class:`ChunkedEncryptor`."""
    encryptor = ChunkedEncryptor(key, len(plaintext), base_iv=base_iv)
    return b"".join(encryptor.update(plaintext) + encryptor.finish())


# --- chunked: streaming decryptor --------------------------------------------------------------


class ChunkedDecryptor:
    """Turns ``aes-256-gcm-chunked-v1`` wire bytes fed in arbitrary pieces into plaintext.

    :meth:`update` returns the plaintext of the frames that completed and authenticated, one piece
    per frame (nothing from a frame that fails); :meth:`finish` raises if the input ended before
    the last expected frame, and logs a warning for bytes after it. Every failure raises and
    leaves the decryptor unusable. ``plaintext_size`` is the object's
    ``file_size``: it fixes the final index (bound into the AAD) and the length of every frame,
    so a frame whose declared length disagrees is rejected before decryption.

    A whole object: ``ChunkedDecryptor(key, size)`` fed from wire offset 0. A range:
    ``ChunkedDecryptor(key, size, header=wire[0:16], first_index=f, last_index=l)`` fed from
    :func:`frame_offset` ``(f)`` (see :class:`ChunkedRangeDecryptor`, which also trims).

    Error handling for the storage wrapper: plaintext of earlier frames may already have been
    returned (and sent) when a later frame fails. The wrapper should therefore decrypt the first
    frame before the response starts, so a wrong key, a bad header or a one-frame object's
    tampering still becomes a clean 500; a failure after the response has started must abort it
    (reset the connection, never end the body cleanly), so clients see a truncated transfer and
    never a complete-looking object. Plaintext already sent was authenticated, never forged.
    """

    def __init__(
        self,
        key: bytes,
        plaintext_size: int,
        *,
        header: bytes | None = None,
        first_index: int = 0,
        last_index: int | None = None,
    ) -> None:
        final = final_chunk_index(plaintext_size)
        last = final if last_index is None else last_index
        if not 0 <= first_index <= last <= final:
            raise ValueError(f"frames {first_index}..{last} are not within 0..{final}")
        if header is None and first_index != 0:
            raise ValueError("a decryptor starting after frame 0 needs the object's header")
        self._key = key
        _check_key(key)
        self._size = plaintext_size
        self._final = final
        self._last = last
        self._index = first_index
        self._crypto: _FrameCrypto | None = None
        if header is not None:
            self._crypto = _FrameCrypto(key, parse_header(header), final)
        self._buf = bytearray()
        # Bytes the current unit needs: the header, then alternately a length and a frame body.
        self._need = HEADER_SIZE if header is None else LEN_SIZE
        self._in_body = False
        self._done = False
        self._trailing = 0
        self._failed = False
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._failed or self._finished:
            raise RuntimeError("ChunkedDecryptor used after an error or after finish")
        try:
            return self._update(memoryview(data).cast("B"))
        except BaseException:
            self._failed = True
            raise

    def finish(self) -> None:
        if self._failed or self._finished:
            raise RuntimeError("ChunkedDecryptor.finish called twice or after an error")
        self._finished = True
        if not self._done:
            self._failed = True
            where = "its header" if self._crypto is None else f"frame {self._index}"
            raise _truncated(where, self._last, self._size)
        if self._trailing:
            log.warning(
                "chunked object has %d bytes after frame %d; ignored (plaintext already emitted)",
                self._trailing,
                self._last,
            )

    def _update(self, view: memoryview) -> list[bytes]:
        out: list[bytes] = []
        pos, size = 0, len(view)
        while pos < size:
            if self._done:
                self._trailing += size - pos
                break
            need = self._need
            if self._buf or size - pos < need:
                take = min(need - len(self._buf), size - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < need:
                    break
                self._consume(self._buf, out)
                self._buf = bytearray()
            else:
                # The whole unit is inside this piece: use it in place.
                self._consume(view[pos : pos + need], out)
                pos += need
        return out

    def _consume(self, unit: bytes | bytearray | memoryview, out: list[bytes]) -> None:
        crypto = self._crypto
        if crypto is None:
            self._crypto = _FrameCrypto(self._key, parse_header(unit), self._final)
            self._need = LEN_SIZE
            return
        index = self._index
        if not self._in_body:
            declared = _LEN.unpack(unit)[0]
            _check_frame_length(index, declared, self._size)
            self._need = declared
            self._in_body = True
            return
        plaintext = crypto.open(index, unit)
        if plaintext:  # only an empty object's single frame is empty
            out.append(plaintext)
        self._in_body = False
        self._need = LEN_SIZE
        self._index = index + 1
        self._done = index == self._last


def decrypt_chunked(key: bytes, wire: bytes | bytearray | memoryview, plaintext_size: int) -> bytes:
    """Whole-buffer convenience over :class:`ChunkedDecryptor`."""
    decryptor = ChunkedDecryptor(key, plaintext_size)
    plaintext = b"".join(decryptor.update(wire))
    decryptor.finish()
    return plaintext


class RangeTrim:
    """Cuts the plaintext of a :class:`RangePlan`'s frames, fed in order, to the planned bytes."""

    __slots__ = ("_left", "_skip")

    def __init__(self, plan: RangePlan) -> None:
        self._skip = plan.skip_head_bytes
        self._left = plan.take_bytes

    def cut(self, piece: bytes) -> bytes:
        """The part of ``piece`` (the next plaintext of the range's frames) inside the range."""
        # Only the first and last frame of the range are cut; the rest pass through uncopied.
        if self._skip:
            dropped = min(self._skip, len(piece))
            piece = piece[dropped:]
            self._skip -= dropped
        if len(piece) > self._left:
            piece = piece[: self._left]
        self._left -= len(piece)
        return piece


class ChunkedRangeDecryptor:
    """Decrypts the wire slice of a :class:`RangePlan` and returns exactly the planned plaintext."""

    def __init__(self, key: bytes, plaintext_size: int, header: bytes, plan: RangePlan) -> None:
        self._inner = ChunkedDecryptor(
            key,
            plaintext_size,
            header=header,
            first_index=plan.first_chunk_index,
            last_index=plan.last_chunk_index,
        )
        self._trim = RangeTrim(plan)

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        cut = self._trim.cut
        return [piece for piece in map(cut, self._inner.update(data)) if piece]

    def finish(self) -> None:
        self._inner.finish()


# --- chunked: frame runs (readers with frame-exact random access) ------------------------------


class FrameRunDecryptor:
    """Decrypts runs of whole, consecutive frames of one chunked object from their wire bytes.

    For readers that fetch byte ranges themselves (a local file, read with ``pread``): every
    frame's offset and length follow from ``plaintext_size``, so a run is fetched in one read
    of exactly :meth:`span` and decrypted without parsing state carried between runs. The checks
    and messages are :class:`ChunkedDecryptor`'s: each length field must be the expected one,
    each frame must authenticate under its own index and final flag, and input that ends early
    is reported as truncation. Only plaintext of frames that authenticated is ever returned.
    """

    __slots__ = ("_crypto", "_size", "final_index")

    def __init__(self, key: bytes, plaintext_size: int, header: bytes | bytearray | memoryview) -> None:
        self._size = plaintext_size
        self.final_index = final_chunk_index(plaintext_size)
        self._crypto = _FrameCrypto(key, parse_header(header), self.final_index)

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Wire offsets ``[start, end)`` of frames ``first``..``last``."""
        if not 0 <= first <= last <= self.final_index:
            raise ValueError(f"frames {first}..{last} are not within 0..{self.final_index}")
        return frame_offset(first), frame_offset(last) + LEN_SIZE + chunk_length(self._size, last) + TAG_SIZE

    def decrypt(self, first: int, last: int, wire: bytes | bytearray | memoryview) -> list[bytes]:
        """Plaintext of frames ``first``..``last``, one piece per non-empty frame, from ``wire``:
        the bytes at :meth:`span`, or fewer when the object ended early (which raises)."""
        start, end = self.span(first, last)
        view = memoryview(wire).cast("B")
        if len(view) > end - start:
            raise ValueError(
                f"{len(view)} wire bytes given for frames {first}..{last}, which span {end - start}"
            )
        crypto, size = self._crypto, self._size
        out: list[bytes] = []
        pos = 0
        for index in range(first, last + 1):
            if len(view) - pos < LEN_SIZE:
                raise _truncated(f"frame {index}", last, size)
            declared = _LEN.unpack_from(view, pos)[0]
            _check_frame_length(index, declared, size)
            body = pos + LEN_SIZE
            pos = body + declared
            if pos > len(view):
                raise _truncated(f"frame {index}", last, size)
            plaintext = crypto.open(index, view[body:pos])
            if plaintext:  # only an empty object's single frame is empty
                out.append(plaintext)
        return out
