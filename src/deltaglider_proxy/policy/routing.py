"""The storage a configuration describes: one backend, or named backends behind a router.

Routes and aliases follow storage.md §10.3–§10.4: only buckets with ``backend:`` are routed,
``alias`` is the real bucket name on that backend, and a singleton deployment has no routing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deltaglider_proxy.config.model import (
    EncryptionConfig,
    FilesystemBackendConfig,
    NamedFilesystemBackend,
    NamedS3Backend,
    S3BackendConfig,
    StorageConfig,
)
from deltaglider_proxy.policy.encryption import SINGLETON_NAME, backend_encryption, check_key_ids
from deltaglider_proxy.storage.base import Backend
from deltaglider_proxy.storage.encrypted import EncryptedBackend, wrap
from deltaglider_proxy.storage.encryption_format import ServerSideEncryption
from deltaglider_proxy.storage.filesystem import FilesystemBackend
from deltaglider_proxy.storage.router import BackendRouter, Route

log = logging.getLogger(__name__)
LAYOUT_HEADER = "x-deltaglider-layout"


def build_one(
    config: FilesystemBackendConfig | S3BackendConfig | NamedFilesystemBackend | NamedS3Backend,
    native: ServerSideEncryption | None = None,
) -> Backend:
    if isinstance(config, FilesystemBackendConfig):
        return FilesystemBackend(Path(config.path))
    from deltaglider_proxy.storage.s3 import S3Backend

    return S3Backend(
        config.endpoint,
        config.region,
        config.force_path_style,
        config.access_key_id,
        config.secret_access_key,
        use_credential_chain=config.credentials == "chain",
        # Ignored by S3 services; asks a DeltaGlider Proxy backend with layout access for the
        # stored objects themselves, so proxies can be chained.
        extra_headers={LAYOUT_HEADER: "raw"},
        server_side_encryption=native,
    )


def build_encrypted(
    name: str,
    config: FilesystemBackendConfig | S3BackendConfig | NamedFilesystemBackend | NamedS3Backend,
    encryption: EncryptionConfig,
    work_dir: Path,
) -> EncryptedBackend:
    """One backend inside its encryption wrapper (every backend has one, even in mode none)."""
    settings = backend_encryption(name, encryption, is_s3=not isinstance(config, FilesystemBackendConfig))
    return wrap(
        build_one(config, settings.native), settings.policy, work_dir.with_name(f"{work_dir.name}.{name}")
    )


def routes(storage: StorageConfig) -> dict[str, Route]:
    table: dict[str, Route] = {}
    for bucket, policy in storage.buckets.items():
        if policy.backend is None:
            if policy.alias is not None:
                log.warning("buckets.%s.alias is ignored: an alias needs `backend:` as well", bucket)
            continue
        table[bucket.lower()] = Route(policy.backend, policy.alias or bucket.lower())
    return table


def build_storage(storage: StorageConfig, work_dir: Path) -> Backend:
    """The backend the engine talks to (a router when several backends are configured).

    ``work_dir`` is a private local directory for ciphertext on its way to the backends.
    """
    if not storage.backends:
        ignored = [b for b, p in storage.buckets.items() if p.backend is not None or p.alias is not None]
        if ignored:
            log.warning(
                "buckets %s set backend/alias, which only apply with `storage.backends`; ignored",
                ", ".join(sorted(ignored)),
            )
        return build_encrypted(
            SINGLETON_NAME, storage.singleton_backend(), storage.backend_encryption, work_dir
        )
    wrapped = [build_encrypted(e.name, e, e.encryption, work_dir) for e in storage.backends]
    check_key_ids(backend.policy.ring for backend in wrapped)
    backends: dict[str, Backend] = {backend.name: backend for backend in wrapped}
    default = storage.default_backend or storage.backends[0].name
    return BackendRouter(backends, default, routes(storage))
