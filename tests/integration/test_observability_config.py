"""Bad observability settings stop the start with a message naming the variable (no traceback)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.server import PROXY_BIN


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DGP_AUDIT_LOG_PATH": "/nonexistent-dir/audit.jsonl"}, "DGP_AUDIT_LOG_PATH"),
        ({"DGP_READY_TIMEOUT_SECS": "soon"}, "DGP_READY_TIMEOUT_SECS"),
        ({"DGP_READY_TIMEOUT_SECS": "0"}, "DGP_READY_TIMEOUT_SECS"),
        ({"DGP_READY_RETRIES": "-1"}, "DGP_READY_RETRIES"),
        ({"DGP_READY_CACHE_TTL_SECS": "nan"}, "DGP_READY_CACHE_TTL_SECS"),
        ({"RUST_LOG": "deltaglider_proxy=loud"}, "RUST_LOG"),
        ({"DGP_LOG_FORMAT": "xml"}, "DGP_LOG_FORMAT"),
    ],
)
def test_bad_setting_is_named(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DGP_", "AWS_", "RUST_LOG"))}
    clean.update({"DGP_LISTEN_ADDR": "127.0.0.1:1", **env})
    result = subprocess.run(
        [str(PROXY_BIN)], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
