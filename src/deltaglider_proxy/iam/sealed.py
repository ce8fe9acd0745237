"""The IAM database file at rest: one AES-256-GCM envelope around the whole SQLite image.

Layout: ``MAGIC`` (8 bytes) ‖ nonce (12) ‖ ciphertext+tag. The magic is authenticated as
associated data, so a file from another format or a flipped bit fails the tag check. The key
comes only from configuration (``DGP_CONFIG_DB_KEY`` / ``advanced.config_db_key``): nothing
stored next to the file — not the bootstrap password hash — can decrypt it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"DGPIAM1\n"
NONCE_BYTES = 12
KEY_BYTES = 32


class SealedFileError(Exception):
    """The file exists but cannot be opened with the configured key (wrong key or damaged)."""


def parse_key(text: str) -> bytes:
    """32 bytes given as 64 hex characters or standard base64; ValueError says how to make one."""
    value = text.strip()
    raw: bytes | None = None
    if len(value) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(value)
    if raw is None:
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.b64decode(value, validate=True)
    if raw is None or len(raw) != KEY_BYTES:
        raise ValueError(
            "must be 32 random bytes as 64 hex characters or base64 "
            "(generate one with `openssl rand -hex 32`)"
        )
    return raw


def seal(key: bytes, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, MAGIC)


def unseal(key: bytes, blob: bytes, source: Path) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise SealedFileError(f"{source} is not an encrypted DeltaGlider IAM database")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], MAGIC)
    except InvalidTag:
        raise SealedFileError(
            f"{source} cannot be decrypted with the configured DGP_CONFIG_DB_KEY (wrong key or damaged "
            "file); start with the key it was written with, or move the file away to start empty"
        ) from None


def write_atomically(path: Path, data: bytes) -> None:
    """temp file (0600) → fsync → rename → fsync the directory: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
