"""The sealed IAM store on a real file: encryption at rest, atomic writes, migrations, reload."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from deltaglider_proxy.iam.model import parse_permissions
from deltaglider_proxy.iam.schema import SCHEMA_VERSION
from deltaglider_proxy.iam.sealed import MAGIC, SealedFileError, parse_key
from deltaglider_proxy.iam.service import IamService
from deltaglider_proxy.iam.store import Conflict, IamDatabase, NotFound

KEY = bytes(range(32))
OTHER = bytes(reversed(range(32)))
ALL = parse_permissions([{"actions": ["*"], "resources": ["*"]}])


def test_file_is_unreadable_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "deltaglider_config.db"
    db = IamDatabase(path, KEY)
    db.create_user("alice", "AKALICE000000000000", "very-secret-value-123", permissions=ALL)
    blob = path.read_bytes()
    assert blob.startswith(MAGIC)
    assert b"alice" not in blob and b"very-secret-value-123" not in blob and b"SQLite format" not in blob
    with pytest.raises(SealedFileError, match="DGP_CONFIG_DB_KEY"):
        IamDatabase(path, OTHER)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("SELECT * FROM users").fetchall()
    reopened = IamDatabase(path, KEY)
    assert [u.name for u in reopened.users()] == ["alice"]
    assert reopened.users()[0].secret_access_key == "very-secret-value-123"


def test_tampered_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "db"
    IamDatabase(path, KEY).create_user("a", "AKA", "secret-secret")
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(SealedFileError):
        IamDatabase(path, KEY)


def test_schema_version_recorded_and_file_mode_private(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = IamDatabase(path, KEY)
    assert db._version() == SCHEMA_VERSION
    assert path.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unique_names_and_keys_conflict(tmp_path: Path) -> None:
    db = IamDatabase(tmp_path / "db", KEY)
    db.create_user("alice", "AK1", "secret-secret")
    with pytest.raises(Conflict):
        db.create_user("alice", "AK2", "secret-secret")
    with pytest.raises(Conflict):
        db.create_user("bob", "AK1", "secret-secret")
    assert db.user_count() == 1


def test_failed_write_leaves_memory_at_the_old_state(tmp_path: Path) -> None:
    path = tmp_path / "db"
    db = IamDatabase(path, KEY)
    db.create_user("alice", "AK1", "secret-secret")
    saved = path.read_bytes()
    path.unlink()
    path.mkdir()  # the rename over it fails, as a full or read-only disk would
    with pytest.raises(OSError):
        db.create_user("bob", "AK2", "secret-secret")
    assert [u.name for u in db.users()] == ["alice"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    path.rmdir()
    path.write_bytes(saved)
    db.create_user("carol", "AK3", "secret-secret")  # the connection still works after the restore
    assert [u.name for u in IamDatabase(path, KEY).users()] == ["alice", "carol"]


def test_groups_memberships_cascade(tmp_path: Path) -> None:
    db = IamDatabase(tmp_path / "db", KEY)
    alice = db.create_user("alice", "AK1", "secret-secret")
    group = db.create_group("readers", "r", ALL, [alice.id, 999])
    assert group.member_ids == (alice.id,)
    assert db.user(alice.id).group_ids == (group.id,)
    db.delete_user(alice.id)
    assert db.group(group.id).member_ids == ()
    with pytest.raises(NotFound):
        db.user(alice.id)


def test_service_rebuilds_index_and_reloads_external_changes(tmp_path: Path) -> None:
    path = tmp_path / "db"

    async def scenario() -> None:
        service = await IamService.open(path, KEY)
        v0 = service.version
        user = await service.write(
            lambda db: db.create_user("alice", "AK1", "secret-secret", permissions=ALL)
        )
        group = await service.write(
            lambda db: db.create_group(
                "g", "", parse_permissions([{"effect": "Deny", "actions": ["delete"], "resources": ["*"]}])
            )
        )
        await service.write(lambda db: db.add_member(group.id, user.id))
        assert service.version == v0 + 3
        principal = service.index.by_access_key["AK1"]
        assert [r.effect for r in principal.rules] == ["Allow", "Deny"]
        # Someone else (a restore) replaces the file: the service notices and reloads.
        other = IamDatabase(tmp_path / "other", KEY)
        other.create_user("bob", "AK2", "secret-secret")
        (tmp_path / "other").replace(path)
        assert await service.reload_if_changed()
        assert set(service.index.by_access_key) == {"AK2"}
        assert not await service.reload_if_changed()
        # A file sealed with another key is refused once; the loaded state stays.
        IamDatabase(tmp_path / "foreign", OTHER).create_user("mallory", "AK9", "secret-secret")
        (tmp_path / "foreign").replace(path)
        assert not await service.reload_if_changed()
        assert not service.db.changed_on_disk()
        assert set(service.index.by_access_key) == {"AK2"}
        await service.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("text", ["00" * 32, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="])
def test_key_formats(text: str) -> None:
    assert len(parse_key(text)) == 32


@pytest.mark.parametrize("text", ["", "short", "00" * 31, "bm90IDMyIGJ5dGVz"])
def test_bad_keys_explain_how_to_make_one(text: str) -> None:
    with pytest.raises(ValueError, match="openssl rand"):
        parse_key(text)
