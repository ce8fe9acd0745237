"""Typed configuration snapshot (storage.md §12.3, control-plane.md §15).

Every section rejects unknown keys so a typo is a start-up error naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GIB = 1024**3
TIB = 1024**4
# Hard ceiling on delta-chain depth: a GET never decodes more hops than this, whatever the config.
MAX_CHAIN_DEPTH_CEILING = 32


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreviousKey(Section):
    """An older proxy-AES key kept for reads (our extension of the single legacy slot)."""

    key: str
    key_id: str | None = None

    @field_validator("key")
    @classmethod
    def _key_ok(cls, value: str) -> str:
        return _checked_key(value)


class EncryptionConfig(Section):
    """Encryption at rest of one backend (storage.md §11.1); keys are 64 hex chars or base64."""

    mode: Literal["none", "aes256-gcm-proxy", "sse-kms", "sse-s3"] = "none"
    key: str | None = None
    key_id: str | None = None
    kms_key_id: str | None = None
    bucket_key_enabled: bool = True
    legacy_key: str | None = None
    legacy_key_id: str | None = None
    previous_keys: list[PreviousKey] = []

    @field_validator("key", "legacy_key")
    @classmethod
    def _key_ok(cls, value: str | None) -> str | None:
        return None if value is None else _checked_key(value)

    @model_validator(mode="after")
    def _mode_needs(self) -> EncryptionConfig:
        # [Decision] upstream only warns and then writes plaintext; an operator who asked for
        # encryption must not get plaintext on the backend because a variable was not exported.
        if self.mode == "aes256-gcm-proxy" and not self.key:
            raise ValueError(
                "mode aes256-gcm-proxy needs a key: set key (64 hex chars or base64 of 32 bytes), or "
                "the environment variable DGP_ENCRYPTION_KEY (singleton backend) / "
                "DGP_BACKEND_<NAME>_ENCRYPTION_KEY (named backend)"
            )
        if self.mode == "sse-kms" and not self.kms_key_id:
            raise ValueError(
                "mode sse-kms needs kms_key_id (a KMS key ARN or alias), or DGP_SSE_KMS_KEY_ID / "
                "DGP_BACKEND_<NAME>_SSE_KMS_KEY_ID"
            )
        return self


def _checked_key(value: str) -> str:
    # Imported here: the key format belongs to the store, config only refuses bad values early.
    from deltaglider_proxy.storage.encryption_format import parse_key

    parse_key(value)  # ValueError says what is wrong with the shape, never the value
    return value


class FilesystemBackendConfig(Section):
    type: Literal["filesystem"] = "filesystem"
    path: str = "./data"

    @field_validator("path")
    @classmethod
    def _path_ok(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class S3BackendConfig(Section):
    type: Literal["s3"]
    endpoint: str | None = None
    region: str = "us-east-1"
    force_path_style: bool = True
    access_key_id: str | None = None
    secret_access_key: str | None = None
    # "static": the keys above (upstream's only mode); "chain": botocore's standard credential
    # chain (env, profile, instance/container role) — chosen explicitly, never as a fallback.
    credentials: Literal["static", "chain"] = "static"

    @model_validator(mode="after")
    def _credentials_given(self) -> S3BackendConfig:
        if self.credentials == "static" and not (self.access_key_id and self.secret_access_key):
            raise ValueError(
                "S3 backend requires explicit credentials: set access_key_id and secret_access_key "
                "(singleton: DGP_BE_AWS_ACCESS_KEY_ID and DGP_BE_AWS_SECRET_ACCESS_KEY), "
                "or `credentials: chain` for the standard AWS credential chain"
            )
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint must start with http:// or https://")
        return self


BackendConfig = Annotated[FilesystemBackendConfig | S3BackendConfig, Field(discriminator="type")]


class NamedFilesystemBackend(FilesystemBackendConfig):
    name: str
    encryption: EncryptionConfig = EncryptionConfig()


class NamedS3Backend(S3BackendConfig):
    name: str
    encryption: EncryptionConfig = EncryptionConfig()


NamedBackend = Annotated[NamedFilesystemBackend | NamedS3Backend, Field(discriminator="type")]


class BucketPolicyConfig(Section):
    compression: bool | None = None
    max_delta_ratio: float | None = None
    # "reference": every delta against the deltaspace's reference.bin (upstream, CLI-readable);
    # "chain": against the most recent stored version, up to max_chain_depth decode hops.
    delta_strategy: Literal["reference", "chain"] | None = None
    max_chain_depth: int | None = Field(default=None, ge=1, le=MAX_CHAIN_DEPTH_CEILING)
    backend: str | None = None
    alias: str | None = None
    public_prefixes: list[str] = []
    public: bool | None = None
    quota_bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _public_exclusive(self) -> BucketPolicyConfig:
        if self.public and self.public_prefixes:
            raise ValueError("`public: true` and a non-empty `public_prefixes` are mutually exclusive")
        return self


class StorageConfig(Section):
    backend: BackendConfig | None = None
    s3: str | None = None
    filesystem: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    force_path_style: bool | None = None
    backend_encryption: EncryptionConfig = EncryptionConfig()
    backends: list[NamedBackend] = []
    default_backend: str | None = None
    buckets: dict[str, BucketPolicyConfig] = {}
    replication: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shorthands(self) -> StorageConfig:
        given = [name for name in ("backend", "s3", "filesystem") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"only one of backend / s3 / filesystem may be set (got {', '.join(given)})")
        companions = [
            n
            for n in ("region", "access_key_id", "secret_access_key", "force_path_style")
            if getattr(self, n) is not None
        ]
        if companions and self.s3 is None:
            raise ValueError(f"{', '.join(companions)} at storage level require `s3:`")
        if self.s3 is not None and not self.s3.startswith(("http://", "https://")):
            raise ValueError("`s3:` must start with http:// or https://")
        if self.filesystem is not None and (
            not self.filesystem.strip() or ".." in self.filesystem.split("/")
        ):
            raise ValueError("`filesystem:` must be a non-empty path without `..` components")
        names = [b.name for b in self.backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate backend names: {', '.join(duplicates)}")
        for bucket, policy in self.buckets.items():
            if policy.backend is not None and policy.backend not in names:
                raise ValueError(f"buckets.{bucket}.backend: unknown backend {policy.backend!r}")
        if self.default_backend is not None and self.default_backend not in names:
            raise ValueError(f"default_backend: unknown backend {self.default_backend!r}")
        if not self.backends:
            self.singleton_backend()  # the s3: shorthand validates its credentials here
        return self

    def singleton_backend(self) -> FilesystemBackendConfig | S3BackendConfig:
        """The one backend of a non-routed deployment, shorthands resolved."""
        if self.backend is not None:
            return self.backend
        if self.s3 is not None:
            return S3BackendConfig(
                type="s3",
                endpoint=self.s3,
                region=self.region or "us-east-1",
                force_path_style=True if self.force_path_style is None else self.force_path_style,
                access_key_id=self.access_key_id,
                secret_access_key=self.secret_access_key,
            )
        if self.filesystem is not None:
            return FilesystemBackendConfig(path=self.filesystem)
        return FilesystemBackendConfig()


class TlsConfig(Section):
    enabled: bool = False
    cert_path: str | None = None
    key_path: str | None = None


class AdvancedConfig(Section):
    listen_addr: str = "0.0.0.0:9000"
    max_delta_ratio: float = 0.75
    # S3's own ceiling for one object; the spool and streaming paths have no smaller limit.
    max_object_size: int = Field(default=5 * TIB, ge=0)
    cache_size_mb: int = Field(default=100, ge=0)
    metadata_cache_mb: int = Field(default=50, ge=0)
    codec_concurrency: int | None = Field(default=None, ge=1)
    blocking_threads: int | None = Field(default=None, ge=1)
    log_level: str = "info"
    config_sync_bucket: str | None = None
    tls: TlsConfig = TlsConfig()
    bootstrap_password_hash: str | None = None
    # The IAM database key (control-plane.md §3.8 [D]): 32 bytes, hex or base64. Never derived
    # from anything stored beside the database; without it there is no IAM database.
    config_db_key: str | None = None
    spool_dir: str | None = None
    spool_max_bytes: int | None = Field(default=None, ge=0)
    # "background": a PUT into a deltaspace that has a reference is stored as-is and re-encoded
    # as a delta by a background worker; "inline": encoded before the PUT answers (upstream).
    delta_encoding: Literal["background", "inline"] = "background"
    # Serve requests carrying ``x-deltaglider-layout: raw`` on stored objects by their backend
    # names (reference.bin, *.delta, records as x-amz-meta-dg-*): what a proxy chained in front
    # of this one needs. It bypasses delta encoding and lets callers replace references, so it
    # is off unless this instance is only written to by trusted proxies.
    layout_access: bool = False

    @field_validator("listen_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        parse_listen_addr(value)
        return value

    @field_validator("config_db_key")
    @classmethod
    def _db_key(cls, value: str | None) -> str | None:
        if value is not None:
            from deltaglider_proxy.iam.sealed import parse_key

            parse_key(value)
        return value


class AccessConfig(Section):
    iam_mode: Literal["gui", "declarative"] = "gui"
    authentication: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    iam_users: list[dict[str, Any]] = []
    iam_groups: list[dict[str, Any]] = []
    auth_providers: list[dict[str, Any]] = []
    group_mapping_rules: list[dict[str, Any]] = []

    @field_validator("authentication")
    @classmethod
    def _auth_mode(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "none":
            raise ValueError(f"unrecognized authentication mode {value!r} (only `none` is accepted)")
        return value.strip().lower() if value is not None else None


class AdmissionConfig(Section):
    blocks: list[dict[str, Any]] = []


class Config(Section):
    defaults: Literal["v1"] | None = None
    storage: StorageConfig = StorageConfig()
    advanced: AdvancedConfig = AdvancedConfig()
    access: AccessConfig = AccessConfig()
    admission: AdmissionConfig = AdmissionConfig()


def parse_listen_addr(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::]:9000``) → (host, port); ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    host = host.strip("[]") or "0.0.0.0"
    return host, port
