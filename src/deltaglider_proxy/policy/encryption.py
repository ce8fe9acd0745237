"""What a backend's ``encryption`` block means for its wrapper and its client (storage.md §11.1–§11.2).

Keys were already checked for shape when the config was validated; here they become a
:class:`KeyRing` per backend, and the cross-backend rule is enforced: one explicit key id must
not name two different keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from deltaglider_proxy.config.model import EncryptionConfig
from deltaglider_proxy.storage.encrypted import EncryptionPolicy
from deltaglider_proxy.storage.encryption_format import (
    EncryptionError,
    KeyRing,
    ServerSideEncryption,
    is_valid_key_id,
    parse_key,
)

log = logging.getLogger(__name__)
SINGLETON_NAME = "default"


@dataclass(frozen=True)
class BackendEncryption:
    policy: EncryptionPolicy
    native: ServerSideEncryption | None


def backend_encryption(name: str, config: EncryptionConfig, *, is_s3: bool) -> BackendEncryption:
    """The wrapper policy and the native SSE request settings of backend ``name``."""
    for field, value in (
        ("key_id", config.key_id),
        ("legacy_key_id", config.legacy_key_id),
        *(("previous_keys.key_id", old.key_id) for old in config.previous_keys),
    ):
        if value is not None and not is_valid_key_id(value):
            log.warning("backend %r: encryption.%s %r is not [A-Za-z0-9_.-]{1,64}", name, field, value)
    proxy = config.mode == "aes256-gcm-proxy"
    ring = KeyRing.build(
        name,
        key=parse_key(config.key) if proxy and config.key else None,
        key_id=config.key_id if proxy else None,
        legacy_key=parse_key(config.legacy_key) if config.legacy_key else None,
        legacy_key_id=config.legacy_key_id,
        previous=[(parse_key(old.key), old.key_id) for old in config.previous_keys],
    )
    native = None
    if config.mode in ("sse-s3", "sse-kms"):
        if is_s3:
            native = ServerSideEncryption(config.mode, config.kms_key_id, config.bucket_key_enabled)
        else:
            log.warning(
                "backend %r: encryption mode %s only applies to S3 backends; a filesystem backend "
                "stores plaintext (use aes256-gcm-proxy to encrypt files)",
                name,
                config.mode,
            )
    return BackendEncryption(EncryptionPolicy(ring, encrypt_writes=proxy), native)


def check_key_ids(rings: Iterable[KeyRing]) -> None:
    """Refuse one key id naming different key bytes on two backends (storage.md §11.2)."""
    owners: dict[str, tuple[str, bytes]] = {}
    for ring in rings:
        pairs = [(ring.primary_key_id, ring.primary_key)]
        pairs += [(ring.legacy.key_id, ring.legacy.key)] if ring.legacy else []
        pairs += [(old.key_id, old.key) for old in ring.previous]
        for key_id, key in pairs:
            if key_id is None or key is None:
                continue
            prior = owners.get(key_id)
            if prior is not None and prior[1] != key and prior[0] != ring.backend_name:
                raise EncryptionError(
                    f"backend {ring.backend_name!r} declares key_id={key_id!r} but a prior backend "
                    f"({prior[0]!r}) uses the SAME key_id with DIFFERENT key bytes; objects could not "
                    "be told apart — give one of them another key_id"
                )
            if prior is not None and prior[1] != key:
                raise EncryptionError(
                    f"backend {ring.backend_name!r} uses key_id={key_id!r} for two different keys"
                )
            owners.setdefault(key_id, (ring.backend_name, key))
