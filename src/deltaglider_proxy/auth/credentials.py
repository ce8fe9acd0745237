"""The bootstrap SigV4 credential: from config, or generated once and kept in the state dir.

The proxy never runs open by accident: without configured keys and without the explicit
``authentication: none`` opt-in, a key pair is generated on first start, stored with mode 0600
and printed once.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CREDENTIALS_FILE = "credentials.json"
_AKID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"

AuthMode = Literal["open", "bootstrap"]


@dataclass(frozen=True)
class KeyPair:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class Credentials:
    """What the S3 edge checks signatures against."""

    mode: AuthMode
    pair: KeyPair | None
    generated: bool = False
    stored_at: Path | None = None

    def secret_for(self, access_key_id: str) -> str | None:
        if self.pair is None:
            return None
        if hmac.compare_digest(access_key_id.encode(), self.pair.access_key_id.encode()):
            return self.pair.secret_access_key
        return None


def generate_pair() -> KeyPair:
    akid = "DG" + "".join(secrets.choice(_AKID_ALPHABET) for _ in range(18))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    return KeyPair(akid, secret)


def _load(path: Path) -> KeyPair | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return KeyPair(str(doc["access_key_id"]), str(doc["secret_access_key"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable credentials file ({exc}); fix or delete it") from None


def _store(path: Path, pair: KeyPair) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"access_key_id": pair.access_key_id, "secret_access_key": pair.secret_access_key}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def resolve_credentials(
    access_key_id: str | None, secret_access_key: str | None, authentication: str | None, state_dir: Path
) -> Credentials:
    if access_key_id and secret_access_key:
        return Credentials("bootstrap", KeyPair(access_key_id, secret_access_key))
    if bool(access_key_id) != bool(secret_access_key):
        raise ValueError(
            "access.access_key_id and access.secret_access_key (DGP_ACCESS_KEY_ID / DGP_SECRET_ACCESS_KEY) "
            "must be set together"
        )
    if authentication == "none":
        return Credentials("open", None)
    path = state_dir / CREDENTIALS_FILE
    pair = _load(path)
    if pair is not None:
        return Credentials("bootstrap", pair, stored_at=path)
    pair = generate_pair()
    _store(path, pair)
    return Credentials("bootstrap", pair, generated=True, stored_at=path)
