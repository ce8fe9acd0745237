"""Load the configuration snapshot: file (YAML) → ``${env:…}`` expansion → DGP_* env → CLI flags.

Everything is validated once, here; a bad value stops start-up with the field path and the
reason (:class:`ConfigError`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deltaglider_proxy.config.model import Config

log = logging.getLogger(__name__)
SEARCH_PATH = (
    "./deltaglider_proxy.yaml",
    "./deltaglider_proxy.yml",
    "/etc/deltaglider_proxy/config.yaml",
    "/etc/deltaglider_proxy/config.yml",
)

# Flat (legacy) root keys and the section each belongs to (storage.md §12.2).
_FLAT_KEYS: dict[str, tuple[str, str]] = {
    "listen_addr": ("advanced", "listen_addr"),
    "max_delta_ratio": ("advanced", "max_delta_ratio"),
    "max_object_size": ("advanced", "max_object_size"),
    "cache_size_mb": ("advanced", "cache_size_mb"),
    "metadata_cache_mb": ("advanced", "metadata_cache_mb"),
    "codec_concurrency": ("advanced", "codec_concurrency"),
    "delta_encoding": ("advanced", "delta_encoding"),
    "layout_access": ("advanced", "layout_access"),
    "blocking_threads": ("advanced", "blocking_threads"),
    "log_level": ("advanced", "log_level"),
    "config_sync_bucket": ("advanced", "config_sync_bucket"),
    "tls": ("advanced", "tls"),
    "bootstrap_password_hash": ("advanced", "bootstrap_password_hash"),
    "admin_password_hash": ("advanced", "bootstrap_password_hash"),
    "backend": ("storage", "backend"),
    "backend_encryption": ("storage", "backend_encryption"),
    "backends": ("storage", "backends"),
    "default_backend": ("storage", "default_backend"),
    "buckets": ("storage", "buckets"),
    "replication": ("storage", "replication"),
    "authentication": ("access", "authentication"),
    "access_key_id": ("access", "access_key_id"),
    "secret_access_key": ("access", "secret_access_key"),
    "iam_mode": ("access", "iam_mode"),
    "iam_users": ("access", "iam_users"),
    "iam_groups": ("access", "iam_groups"),
    "auth_providers": ("access", "auth_providers"),
    "group_mapping_rules": ("access", "group_mapping_rules"),
    "admission_blocks": ("admission", "blocks"),
}
_SECTIONS = ("storage", "advanced", "access", "admission", "defaults")
_ENV_REF = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem a person can act on: names the source, the field and the reason."""


@dataclass(frozen=True)
class RuntimeSettings:
    """Env-only knobs (storage.md §12.3: "not YAML keys")."""

    debug_headers: bool = False
    clock_skew_seconds: int = 300
    request_timeout_secs: int = 300
    max_concurrent_requests: int = 1024
    max_multipart_uploads: int = 1000
    multipart_idle_ttl_hours: float = 24.0
    trust_proxy_headers: bool = False
    log_format: str = "text"
    codec_timeout_seconds: int = 60
    # Observability (control-plane.md §6.7, §1.2): bearer token for /_/metrics; /_/ready probing.
    metrics_token: str | None = None
    ready_timeout_secs: float = 3.0
    ready_retries: int = 2
    ready_cache_ttl_secs: float = 0.0
    # Identity and access (control-plane.md §2.3, §5).
    trusted_proxy_cidrs: str = ""
    session_ttl_hours: float = 4.0
    session_idle_minutes: float = 60.0
    secure_cookies: bool | None = None  # None: automatic (TLS or trusted X-Forwarded-Proto: https)
    rate_limit_max_attempts: int = 100
    rate_limit_window_secs: int = 300
    rate_limit_lockout_secs: int = 600


@dataclass(frozen=True)
class Snapshot:
    config: Config
    runtime: RuntimeSettings
    source: Path | None


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    if cli_path:
        return Path(cli_path)
    if env.get("DGP_CONFIG"):
        return Path(env["DGP_CONFIG"])
    for candidate in SEARCH_PATH:
        path = Path(candidate)
        if path.is_file():
            return path
    return None


def expand_env_refs(text: str, env: Mapping[str, str], source: str) -> str:
    """Expand ``${env:NAME}`` / ``${env:NAME:-default}``; ``$$`` is a literal ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: ${{env:{name}}} is referenced but the environment variable is not set")

    return _ENV_REF.sub(substitute, text)


def _read_document(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: only YAML config files (.yaml/.yml) are supported")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if "DGP_CONFIG" in env:
            return {}  # DGP_CONFIG may name a file that does not exist yet (§12.1)
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(expand_env_refs(text, env, str(path)))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return _normalise_shape(doc, path)


def _normalise_shape(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    flat = [k for k in doc if k in _FLAT_KEYS]
    sections = [k for k in doc if k in _SECTIONS and k != "defaults"]
    if flat and sections:
        raise ConfigError(
            f"{path}: mixes flat keys ({', '.join(flat)}) with sections ({', '.join(sections)}); "
            "use one shape"
        )
    if not flat:
        return doc
    out: dict[str, Any] = {"defaults": doc["defaults"]} if "defaults" in doc else {}
    for key, value in doc.items():
        if key in _FLAT_KEYS:
            section, field = _FLAT_KEYS[key]
            out.setdefault(section, {})[field] = value
    return out


def _set(doc: dict[str, Any], section: str, field: str, value: Any) -> None:
    doc.setdefault(section, {})
    if not isinstance(doc[section], dict):
        raise ConfigError(f"{section}: must be a mapping")
    doc[section][field] = value


def _apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> None:
    """DGP_* variables override the file (storage.md §12.4)."""
    advanced_numbers = {
        "DGP_MAX_DELTA_RATIO": ("max_delta_ratio", float),
        "DGP_MAX_OBJECT_SIZE": ("max_object_size", int),
        "DGP_CACHE_MB": ("cache_size_mb", int),
        "DGP_METADATA_CACHE_MB": ("metadata_cache_mb", int),
        "DGP_CODEC_CONCURRENCY": ("codec_concurrency", int),
        "DGP_BLOCKING_THREADS": ("blocking_threads", int),
        "DGP_SPOOL_MAX_BYTES": ("spool_max_bytes", int),
    }
    for var, (field, kind) in advanced_numbers.items():
        if env.get(var):
            try:
                _set(doc, "advanced", field, kind(env[var]))
            except ValueError:
                raise ConfigError(f"{var}: {env[var]!r} is not a valid {kind.__name__}") from None
    for var, field in (
        ("DGP_LISTEN_ADDR", "listen_addr"),
        ("DGP_LOG_LEVEL", "log_level"),
        ("DGP_SPOOL_DIR", "spool_dir"),
        ("DGP_CONFIG_SYNC_BUCKET", "config_sync_bucket"),
        ("DGP_DELTA_ENCODING", "delta_encoding"),
        ("DGP_CONFIG_DB_KEY", "config_db_key"),
    ):
        if env.get(var):
            _set(doc, "advanced", field, env[var])
    if env.get("RUST_LOG"):
        # Upstream's filter variable wins over DGP_LOG_LEVEL (control-plane.md §10.3).
        _set(doc, "advanced", "log_level", env["RUST_LOG"])
    if env.get("DGP_LAYOUT_ACCESS"):
        _set(doc, "advanced", "layout_access", _truthy(env["DGP_LAYOUT_ACCESS"]))
    if env.get("DGP_TLS_ENABLED"):
        tls = dict(doc.get("advanced", {}).get("tls") or {})
        tls["enabled"] = _truthy(env["DGP_TLS_ENABLED"])
        if env.get("DGP_TLS_CERT"):
            tls["cert_path"] = env["DGP_TLS_CERT"]
        if env.get("DGP_TLS_KEY"):
            tls["key_path"] = env["DGP_TLS_KEY"]
        _set(doc, "advanced", "tls", tls)
    for var, field in (
        ("DGP_AUTHENTICATION", "authentication"),
        ("DGP_ACCESS_KEY_ID", "access_key_id"),
        ("DGP_SECRET_ACCESS_KEY", "secret_access_key"),
    ):
        if env.get(var):
            _set(doc, "access", field, env[var])
    # The singleton backend: S3 env vars win over DGP_DATA_DIR; either replaces the whole block.
    if env.get("DGP_S3_ENDPOINT") or env.get("DGP_S3_REGION"):
        storage = {
            k: v for k, v in (doc.get("storage") or {}).items() if k not in ("backend", "s3", "filesystem")
        }
        storage["backend"] = {
            "type": "s3",
            "endpoint": env.get("DGP_S3_ENDPOINT") or None,
            "region": env.get("DGP_S3_REGION") or "us-east-1",
            "force_path_style": _truthy(env.get("DGP_S3_PATH_STYLE", "true")),
            "access_key_id": env.get("DGP_BE_AWS_ACCESS_KEY_ID"),
            "secret_access_key": env.get("DGP_BE_AWS_SECRET_ACCESS_KEY"),
        }
        doc["storage"] = storage
    elif env.get("DGP_DATA_DIR"):
        storage = {
            k: v for k, v in (doc.get("storage") or {}).items() if k not in ("backend", "s3", "filesystem")
        }
        storage["backend"] = {"type": "filesystem", "path": env["DGP_DATA_DIR"]}
        doc["storage"] = storage
    _inject_backend_credentials(doc, env)
    _inject_encryption_secrets(doc, env)


def env_suffix(backend_name: str) -> str:
    """``eu-archive`` → ``EU_ARCHIVE``: the ``<SUFFIX>`` of a named backend's env vars."""
    return backend_name.upper().replace("-", "_").replace(".", "_")


def _inject_encryption_secrets(doc: dict[str, Any], env: Mapping[str, str]) -> None:
    """Encryption secrets from the environment (storage.md §11.2).

    A non-empty variable replaces the file's value, but only for the mode the file already
    declares: the environment can supply a key, never switch encryption on or off.
    """
    storage = doc.get("storage")
    if not isinstance(storage, dict):
        return
    targets: list[tuple[str, str, Any]] = [
        ("storage.backend_encryption", "", storage.get("backend_encryption"))
    ]
    backends = storage.get("backends")
    seen: dict[str, str] = {}
    for index, entry in enumerate(backends if isinstance(backends, list) else []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        suffix = env_suffix(entry["name"])
        if suffix in seen:
            log.warning(
                "backends %r and %r share the env suffix %s: DGP_BACKEND_%s_* configures both",
                seen[suffix],
                entry["name"],
                suffix,
                suffix,
            )
        seen[suffix] = entry["name"]
        targets.append(
            (f"storage.backends.{index}.encryption", f"BACKEND_{suffix}_", entry.get("encryption"))
        )
    for where, infix, block in targets:
        if not isinstance(block, dict):
            continue
        mode = block.get("mode", "none")
        if mode == "aes256-gcm-proxy":
            var, field = f"DGP_{infix}ENCRYPTION_KEY", "key"
        elif mode == "sse-kms":
            var, field = f"DGP_{infix}SSE_KMS_KEY_ID", "kms_key_id"
        else:
            continue
        if env.get(var):
            block[field] = env[var]
        elif field == "key" and block.get("key"):
            log.warning("%s.key is read from the config file; prefer the environment variable %s", where, var)


def _inject_backend_credentials(doc: dict[str, Any], env: Mapping[str, str]) -> None:
    """DGP_BE_AWS_* supply the singleton S3 backend's keys when the file leaves them out."""
    storage = doc.get("storage")
    if not isinstance(storage, dict):
        return
    pairs = (
        ("access_key_id", "DGP_BE_AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "DGP_BE_AWS_SECRET_ACCESS_KEY"),
    )
    backend = storage.get("backend")
    if isinstance(backend, dict) and backend.get("type") == "s3":
        for field, var in pairs:
            if not backend.get(field) and env.get(var):
                backend[field] = env[var]
    elif storage.get("s3") is not None:
        for field, var in pairs:
            if not storage.get(field) and env.get(var):
                storage[field] = env[var]


def _int_env(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    text = env.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum} (got {value})")
    return value


def _float_env(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if not value >= minimum:  # also rejects nan
        raise ConfigError(f"{name}: must be at least {minimum} (got {text})")
    return value


def runtime_settings(env: Mapping[str, str]) -> RuntimeSettings:
    fmt = env.get("DGP_LOG_FORMAT", "text").strip().lower() or "text"
    if fmt not in ("text", "json", "logfmt"):
        raise ConfigError(f"DGP_LOG_FORMAT: {fmt!r} is not one of text, json, logfmt")
    ttl_text = env.get("DGP_MULTIPART_IDLE_TTL_HOURS", "24")
    try:
        ttl = float(ttl_text)
    except ValueError:
        raise ConfigError(f"DGP_MULTIPART_IDLE_TTL_HOURS: {ttl_text!r} is not a number") from None
    return RuntimeSettings(
        debug_headers=_truthy(env.get("DGP_DEBUG_HEADERS", "false")),
        clock_skew_seconds=_int_env(env, "DGP_CLOCK_SKEW_SECONDS", 300, 1),
        request_timeout_secs=_int_env(env, "DGP_REQUEST_TIMEOUT_SECS", 300, 1),
        max_concurrent_requests=_int_env(env, "DGP_MAX_CONCURRENT_REQUESTS", 1024, 1),
        max_multipart_uploads=_int_env(env, "DGP_MAX_MULTIPART_UPLOADS", 1000, 1),
        multipart_idle_ttl_hours=ttl,
        trust_proxy_headers=_truthy(env.get("DGP_TRUST_PROXY_HEADERS", "false")),
        log_format=fmt,
        codec_timeout_seconds=_int_env(env, "DGP_CODEC_TIMEOUT_SECS", 60, 1),
        metrics_token=env.get("DGP_METRICS_TOKEN") or None,
        ready_timeout_secs=_float_env(env, "DGP_READY_TIMEOUT_SECS", 3.0, 0.001),
        ready_retries=_int_env(env, "DGP_READY_RETRIES", 2, 0),
        ready_cache_ttl_secs=_float_env(env, "DGP_READY_CACHE_TTL_SECS", 0.0, 0.0),
        trusted_proxy_cidrs=env.get("DGP_TRUSTED_PROXY_CIDRS", ""),
        session_ttl_hours=_float_env(env, "DGP_SESSION_TTL_HOURS", 4.0, 0.01),
        session_idle_minutes=_float_env(env, "DGP_SESSION_IDLE_MINUTES", 60.0, 0.01),
        secure_cookies=_truthy(env["DGP_SECURE_COOKIES"]) if env.get("DGP_SECURE_COOKIES") else None,
        rate_limit_max_attempts=_int_env(env, "DGP_RATE_LIMIT_MAX_ATTEMPTS", 100, 1),
        rate_limit_window_secs=_int_env(env, "DGP_RATE_LIMIT_WINDOW_SECS", 300, 1),
        rate_limit_lockout_secs=_int_env(env, "DGP_RATE_LIMIT_LOCKOUT_SECS", 600, 1),
    )


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
        # Discriminated unions add the tag to the path; it is noise for the reader.
        location = location.replace(".filesystem.", ".").replace(".s3.", ".")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        lines.append(f"  {location or '(top level)'}: {message}")
    return f"{source}: invalid configuration\n" + "\n".join(lines)


def load_snapshot(
    cli_config: str | None = None,
    cli_listen: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Snapshot:
    env = dict(os.environ if env is None else env)
    path = resolve_config_path(cli_config, env)
    doc = _read_document(path, env) if path is not None else {}
    _apply_env(doc, env)
    if cli_listen:
        _set(doc, "advanced", "listen_addr", cli_listen)
    source = str(path) if path is not None else "configuration (defaults + environment)"
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return Snapshot(config=config, runtime=runtime_settings(env), source=path)
