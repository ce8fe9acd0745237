"""Layout access settings (YAML, DGP_LAYOUT_ACCESS) and multipart manifests from before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deltaglider_proxy.config.load import load_snapshot
from deltaglider_proxy.engine.multipart import MultipartStore


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"DGP_LAYOUT_ACCESS": "true"}, True), ({"DGP_LAYOUT_ACCESS": "1"}, True)],
)
def test_env(env: dict[str, str], expected: bool, tmp_path: Path) -> None:
    snapshot = load_snapshot(env={**env, "DGP_CONFIG": str(tmp_path / "absent.yaml")})
    assert snapshot.config.advanced.layout_access is expected


def test_yaml_and_env_override(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("advanced:\n  layout_access: true\n")
    assert load_snapshot(env={"DGP_CONFIG": str(config)}).config.advanced.layout_access
    env = {"DGP_CONFIG": str(config), "DGP_LAYOUT_ACCESS": "false"}
    assert not load_snapshot(env=env).config.advanced.layout_access
    flat = tmp_path / "flat.yaml"
    flat.write_text("layout_access: true\n")
    assert load_snapshot(env={"DGP_CONFIG": str(flat)}).config.advanced.layout_access


def test_manifest_without_layout_metadata_still_loads(tmp_path: Path) -> None:
    """An upload.json written before layout mode existed is a logical upload."""
    upload_dir = tmp_path / "0123"
    upload_dir.mkdir()
    old: dict[str, Any] = {
        "upload_id": "0123",
        "bucket": "b",
        "key": "k.txt",
        "initiated": 1.0,
        "content_type": None,
        "user_metadata": {},
        "stored_headers": {},
        "checksum_algorithm": None,
        "checksum_type": None,
        "last_activity": 1.0,
    }
    (upload_dir / "upload.json").write_text(json.dumps(old))
    store = MultipartStore(tmp_path, engine=None)  # type: ignore[arg-type]  # loading needs no engine
    store.start()
    upload, parts = store.parts("0123", "b", "k.txt")
    assert upload.layout_metadata is None and parts == []
