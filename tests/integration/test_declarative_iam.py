"""Declarative IAM (control-plane.md §3.10): YAML users/groups reconciled at start, dry-run diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from tests.support.admin import Admin, iam_proxy, s3_for

ALICE_SECRET = "alice-secret-from-the-environment-0001"


def write_config(path: Path, users: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"access": {"iam_mode": "declarative", "iam_users": users, "iam_groups": groups}}
    path.write_text(yaml.safe_dump(doc))


GROUPS = [
    {"name": "admins", "permissions": [{"effect": "Allow", "actions": ["*"], "resources": ["*"]}]},
    {
        "name": "readers",
        "description": "read all",
        "permissions": [{"actions": ["read", "list"], "resources": ["*"]}],
    },
]
ALICE = {
    "name": "alice",
    "access_key_id": "AKALICE0000000000001",
    "secret_access_key": "${env:ALICE_SECRET}",
    "groups": ["admins"],
}
BOB = {
    "name": "bob",
    "access_key_id": "AKBOB00000000000001",
    "secret_access_key": "bob-secret-0000000001",
    "groups": ["readers"],
}


def test_reconcile_on_start_gate_preview_and_update(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "deltaglider_proxy.yaml"
    write_config(config, [ALICE, BOB], GROUPS)
    env = {"DGP_CONFIG": str(config), "ALICE_SECRET": ALICE_SECRET}
    proxy = iam_proxy(tmp_path / "srv", **env)
    try:
        alice = s3_for(
            proxy.endpoint, {"access_key_id": ALICE["access_key_id"], "secret_access_key": ALICE_SECRET}
        )
        alice.create_bucket(Bucket="decl")
        alice.put_object(Bucket="decl", Key="k", Body=b"v")
        bob = s3_for(
            proxy.endpoint,
            {"access_key_id": BOB["access_key_id"], "secret_access_key": BOB["secret_access_key"]},
        )
        assert bob.get_object(Bucket="decl", Key="k")["Body"].read() == b"v"
        with pytest.raises(ClientError):
            bob.put_object(Bucket="decl", Key="k2", Body=b"x")
        admin = Admin(proxy.endpoint)
        admin.login()
        gated = admin.call("POST", "/users", {"name": "eve"})
        assert gated.status_code == 403 and gated.json()["error"] == "iam_declarative"
        assert sorted(u["name"] for u in admin.ok("GET", "/users")) == ["alice", "bob"]  # no legacy-admin
        preview = admin.ok("POST", "/config/declarative-iam-validate")
        assert preview["warnings"] == ["declarative IAM preview: no IAM changes (idempotent apply)"]
        changed = admin.ok(
            "POST",
            "/config/declarative-iam-validate",
            {"iam_users": [{**ALICE, "secret_access_key": ""}], "iam_groups": GROUPS},
        )
        assert changed["diff"]["users"]["delete"] == ["bob"]
        assert changed["warnings"][0].startswith("declarative IAM preview: users(+0/~0/-1)")
        bad = admin.call(
            "POST", "/config/declarative-iam-validate", {"iam_users": [{**BOB, "groups": ["nope"]}]}
        )
        assert bad.status_code == 422 and bad.json()["error"] == "iam_reconcile_failed"
        assert "no state changed" in bad.json()["message"] and "nope" in bad.json()["message"]
        empty = admin.ok("POST", "/config/declarative-iam-validate", {"iam_users": [], "iam_groups": []})
        assert "REFUSED" in empty["warnings"][0]
        assert "action=iam_reconcile_user_create | user=declarative | target=alice" in proxy.log()
        db = config.parent / "deltaglider_config.db"
        before = db.stat().st_mtime_ns
        # An idempotent restart writes nothing.
        proxy.stop()
        proxy.start()
        assert db.stat().st_mtime_ns == before
        proxy.stop()
        # Drop bob, give readers write: the restart reconciles; alice's secret (empty = keep) survives.
        readers = {**GROUPS[1], "permissions": [{"actions": ["read", "list", "write"], "resources": ["*"]}]}
        write_config(config, [{**ALICE, "secret_access_key": ""}], [GROUPS[0], readers])
        proxy.start()
        alice.put_object(Bucket="decl", Key="k3", Body=b"still me")
        with pytest.raises(ClientError):
            bob.get_object(Bucket="decl", Key="k")
        assert requests.get(f"{proxy.endpoint}/_/api/whoami").json()["mode"] == "iam"
    finally:
        proxy.stop()


def test_invalid_declaration_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "deltaglider_proxy.yaml"
    write_config(config, [{**BOB, "groups": ["missing"]}], [])
    with pytest.raises(
        RuntimeError, match=r"reconcile failed \(no state changed\): user 'bob': unknown group"
    ):
        iam_proxy(tmp_path / "srv", DGP_CONFIG=str(config))


def wait_for_version_change(admin: Admin, version: int, timeout: float = 15.0) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = int(admin.ok("GET", "/iam/version")["version"])
        if now != version:
            return now
        time.sleep(0.2)
    raise AssertionError("the IAM index was not rebuilt")


def test_config_edits_are_reconciled_live(tmp_path: Path) -> None:
    import time

    config = tmp_path / "etc" / "deltaglider_proxy.yaml"
    write_config(config, [BOB], GROUPS)
    proxy = iam_proxy(tmp_path / "srv", DGP_CONFIG=str(config))
    try:
        admin = Admin(proxy.endpoint)
        admin.login()
        version = int(admin.ok("GET", "/iam/version")["version"])
        carol = {
            "name": "carol",
            "access_key_id": "AKCAROL000000000001",
            "secret_access_key": "carol-secret-0000001",
        }
        write_config(config, [BOB, {**carol, "groups": ["admins"]}], GROUPS)
        version = wait_for_version_change(admin, version)
        s3 = s3_for(proxy.endpoint, carol)
        s3.create_bucket(Bucket="live")
        assert "action=iam_reconcile_user_create | user=declarative | target=carol" in proxy.log()
        # A broken edit changes nothing and says why in the log.
        write_config(config, [{**carol, "groups": ["ghosts"]}], GROUPS)
        time.sleep(3)
        assert int(admin.ok("GET", "/iam/version")["version"]) == version
        assert "unknown group(s) ghosts" in proxy.log()
        s3.put_object(Bucket="live", Key="k", Body=b"still works")
        # Back to gui: the API unlocks, the users stay.
        config.write_text(yaml.safe_dump({"access": {"iam_mode": "gui"}}))
        deadline = time.monotonic() + 15
        while (
            admin.call("POST", "/groups", {"name": "unlocked"}).status_code == 403
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert any(g["name"] == "unlocked" for g in admin.ok("GET", "/groups"))
        assert sorted(u["name"] for u in admin.ok("GET", "/users")) == ["bob", "carol"]
    finally:
        proxy.stop()
