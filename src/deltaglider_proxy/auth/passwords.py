"""Bootstrap password hashing and policy (control-plane.md §2.2.3–§2.2.4).

New hashes are argon2id. Upstream's bcrypt hashes (``$2b$…``, or their base64 form) are still
accepted so an operator can carry an existing ``DGP_BOOTSTRAP_PASSWORD_HASH`` across.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
_ALPHABET = string.ascii_letters + string.digits
MIN_LENGTH = 12
MAX_LENGTH = 128
COMMON = frozenset(
    {
        "password1234",
        "123456789012",
        "admin1234567",
        "admin123456!",
        "password1234!",
        "qwerty123456",
        "letmein12345",
        "welcome12345",
        "monkey1234567",
        "dragon1234567",
        "master1234567",
        "1234567890ab",
        "changeme1234",
        "password12345",
        "adminadminadmin",
        "abcdefghijkl",
        "aaaaaaaaaaaa",
        "123456789abc",
        "passw0rd1234",
        "p@ssword1234",
    }
)


class CorruptHash(Exception):
    """The stored hash is neither argon2 nor bcrypt: login cannot work until it is fixed."""


def policy_error(password: str) -> str | None:
    size = len(password.encode("utf-8"))
    if size < MIN_LENGTH:
        return "Password must be at least 12 characters"
    if size > MAX_LENGTH:
        return "Password too long (max 128 characters)"
    if password.lower() in COMMON:
        return "Password is too common"
    return None


def generate_password() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def decode_configured_hash(value: str) -> str:
    """A configured hash as given (``$…``) or base64 of one; anything else is returned trimmed."""
    text = value.strip()
    if text.startswith("$"):
        return text
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return text
    return decoded if decoded.startswith("$") else text


def verify_password(stored_hash: str, password: str) -> bool:
    """Constant-time check against an argon2 or bcrypt hash; CorruptHash if it is neither."""
    if stored_hash.startswith("$argon2"):
        try:
            return _HASHER.verify(stored_hash, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            raise CorruptHash("the stored bootstrap password hash is not a valid argon2 hash") from None
    if stored_hash.startswith("$2"):
        try:
            return bcrypt.checkpw(password.encode("utf-8")[:72], stored_hash.encode("ascii"))
        except ValueError:
            raise CorruptHash("the stored bootstrap password hash is not a valid bcrypt hash") from None
    raise CorruptHash("the stored bootstrap password hash is neither argon2 ($argon2id$…) nor bcrypt ($2b$…)")


def to_base64(stored_hash: str) -> str:
    return base64.b64encode(stored_hash.encode("utf-8")).decode("ascii")
