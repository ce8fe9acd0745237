"""Encryption settings as loaded from YAML + environment (storage.md §11.2): env supplies the
secret of the mode the file declares and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltaglider_proxy.config.load import ConfigError, env_suffix, load_snapshot
from deltaglider_proxy.config.model import Config

KEY = "ab" * 32
OTHER = "cd" * 32


def load(tmp_path: Path, text: str, env: dict[str, str]) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_snapshot(str(path), env=env).config


def test_env_key_fills_the_declared_proxy_mode(tmp_path: Path) -> None:
    config = load(
        tmp_path, "storage:\n  backend_encryption: {mode: aes256-gcm-proxy}\n", {"DGP_ENCRYPTION_KEY": KEY}
    )
    assert config.storage.backend_encryption.key == KEY


def test_env_key_overrides_the_file_but_never_switches_the_mode(tmp_path: Path) -> None:
    text = f"storage:\n  backend_encryption: {{mode: aes256-gcm-proxy, key: '{OTHER}'}}\n"
    assert load(tmp_path, text, {"DGP_ENCRYPTION_KEY": KEY}).storage.backend_encryption.key == KEY
    assert load(tmp_path, text, {"DGP_ENCRYPTION_KEY": ""}).storage.backend_encryption.key == OTHER
    plain = load(tmp_path, "storage: {}\n", {"DGP_ENCRYPTION_KEY": KEY})
    assert plain.storage.backend_encryption.mode == "none"
    assert plain.storage.backend_encryption.key is None


def test_kms_key_id_and_named_backend_suffixes(tmp_path: Path) -> None:
    text = (
        "storage:\n  backends:\n"
        "    - {name: eu-archive.1, type: filesystem, path: ./a, encryption: {mode: sse-kms}}\n"
        "    - {name: local, type: filesystem, path: ./b, encryption: {mode: aes256-gcm-proxy}}\n"
    )
    env = {
        "DGP_BACKEND_EU_ARCHIVE_1_SSE_KMS_KEY_ID": "alias/archive",
        "DGP_BACKEND_LOCAL_ENCRYPTION_KEY": KEY,
        "DGP_BACKEND_EU_ARCHIVE_1_ENCRYPTION_KEY": OTHER,  # not the declared mode: ignored
    }
    backends = load(tmp_path, text, env).storage.backends
    assert backends[0].encryption.kms_key_id == "alias/archive"
    assert backends[0].encryption.key is None
    assert backends[1].encryption.key == KEY
    assert env_suffix("eu-archive.1") == "EU_ARCHIVE_1"


def test_previous_keys_are_validated_by_field(tmp_path: Path) -> None:
    text = (
        "storage:\n  backend_encryption:\n    mode: none\n"
        "    previous_keys:\n      - {key_id: old, key: '0011'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, {})
    assert "storage.backend_encryption.previous_keys.0.key" in str(caught.value)
    assert "0011" not in str(caught.value)
