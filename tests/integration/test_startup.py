"""Start-up as an operator meets it: config errors that name the field, generated credentials that
are persisted privately and printed once, and authentication off only when asked for."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from tests.support.server import PROXY_BIN, ProxyServer

pytestmark = pytest.mark.timeout(120)


def _run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_"))}
    # No DGP_DATA_DIR: it would replace the config's backend block (storage.md §12.4); the
    # default ./data lands in tmp_path.
    clean["DGP_LISTEN_ADDR"] = "127.0.0.1:1"
    clean.update(env or {})
    return subprocess.run(
        [str(PROXY_BIN), *args], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_version(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "--version")
    assert result.returncode == 0
    from deltaglider_proxy import __version__

    assert __version__ in result.stdout


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        ("advanced:\n  listen_addr: nowhere\n", "listen_addr", "HOST:PORT"),
        ("advanced:\n  max_object_size: -5\n", "max_object_size", ""),
        ("storage:\n  backend:\n    type: tape\n", "type", ""),
        ("acess:\n  access_key_id: x\n", "acess", ""),
        ("advanced: [1, 2\n", "", "YAML"),
        ("storage:\n  buckets:\n    b1:\n      delta_strategy: previous\n", "delta_strategy", ""),
        ("storage:\n  buckets:\n    b1:\n      max_chain_depth: 33\n", "max_chain_depth", "32"),
    ],
    ids=[
        "listen-addr",
        "negative-size",
        "unknown-backend",
        "misspelt-section",
        "bad-yaml",
        "unknown-strategy",
        "chain-too-deep",
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, document: str, field: str, reason: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(document)
    result = _run_cli(tmp_path, "--config", str(config), env={"DGP_LISTEN_ADDR": ""})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert field in result.stderr and reason in result.stderr, result.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_bad_env_var_names_the_variable(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, env={"DGP_LOG_LEVEL": "chatty"})
    assert result.returncode != 0
    assert "DGP_LOG_LEVEL" in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert "absent.yaml" in result.stderr and "Traceback" not in result.stderr


def test_generated_credentials_are_private_printed_once_and_work(tmp_path: Path) -> None:
    server = ProxyServer(
        data_dir=tmp_path / "data", env={"DGP_ACCESS_KEY_ID": "", "DGP_SECRET_ACCESS_KEY": ""}
    )
    server.start()
    try:
        stored = tmp_path / "data" / ".deltaglider" / "credentials.json"
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        pair = json.loads(stored.read_text())
        log = server.log()
        assert pair["secret_access_key"] in log
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=pair["access_key_id"],
            aws_secret_access_key=pair["secret_access_key"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        client.create_bucket(Bucket="generated")
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["generated"]
        assert requests.get(f"{server.endpoint}/generated").status_code == 403
    finally:
        server.stop()
    # A restart reuses the stored pair and does not print the secret again.
    assert server.log_path is not None
    server.log_path.unlink()
    server.port = 0
    server.start()
    try:
        assert pair["secret_access_key"] not in server.log()
        assert pair["access_key_id"] in server.log()
        assert json.loads(stored.read_text()) == pair
    finally:
        server.stop()


def test_authentication_none_is_an_explicit_opt_in(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text("access:\n  authentication: none\n")
    server = ProxyServer(
        data_dir=tmp_path / "data",
        env={"DGP_ACCESS_KEY_ID": "", "DGP_SECRET_ACCESS_KEY": ""},
        args=["--config", str(config)],
    )
    server.start()
    try:
        assert "authentication is disabled" in server.log()
        assert requests.put(f"{server.endpoint}/open-bucket").status_code == 200
        assert requests.put(f"{server.endpoint}/open-bucket/k", data=b"hello").status_code == 200
        assert requests.get(f"{server.endpoint}/open-bucket/k").content == b"hello"
    finally:
        server.stop()


def test_runs_as_python_module_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deltaglider_proxy", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_missing_codec_refuses_to_start(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, env={"PATH": str(tmp_path / "empty-bin")})
    assert result.returncode != 0
    assert "xdelta3" in result.stderr and "apt-get install xdelta3" in result.stderr
    assert "Traceback" not in result.stderr
