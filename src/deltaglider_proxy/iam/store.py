"""The encrypted IAM store: SQLite in memory, sealed to one file after every committed change.

The database is small (users, groups, rules), so it lives in an in-memory SQLite connection and
every committed mutation writes the whole image, AES-256-GCM sealed, with an atomic rename. A
failed write restores the previous image, so memory and disk never disagree. Calls are
synchronous and must be serialised by the caller (:class:`deltaglider_proxy.iam.service.IamService`
runs them one at a time in a worker thread).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from deltaglider_proxy.iam.model import Group, Permission, User
from deltaglider_proxy.iam.schema import migrate
from deltaglider_proxy.iam.sealed import seal, unseal, write_atomically

DB_FILE = "deltaglider_config.db"
T = TypeVar("T")


class NotFound(Exception):
    pass


class Conflict(Exception):
    """A unique name or access key is already taken."""


def _rule_rows(rows: Iterable[sqlite3.Row]) -> tuple[Permission, ...]:
    return tuple(
        Permission(
            id=row["id"],
            effect="Deny" if row["effect"] == "Deny" else "Allow",
            actions=tuple(json.loads(row["actions"])),
            resources=tuple(json.loads(row["resources"])),
            conditions=json.loads(row["conditions_json"]) if row["conditions_json"] else None,
        )
        for row in rows
    )


class IamDatabase:
    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._image = b""
        self.file_signature: tuple[int, int, int] | None = None
        self.load()

    # -- file <-> memory ---------------------------------------------------------------------

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> None:
        """Read the sealed file (if any) into memory and migrate it; SealedFileError on a wrong key."""
        signature = self._signature()
        if signature is not None:
            image = unseal(self._key, self.path.read_bytes(), self.path)
            self._conn.deserialize(image)
        self._conn.execute("PRAGMA foreign_keys = ON")
        before = migrate(self._conn)
        self._image = self._conn.serialize()
        if signature is None or before != self._version():
            self._write()
        else:
            self.file_signature = signature

    def changed_on_disk(self) -> bool:
        return self._signature() != self.file_signature

    def mark_seen(self) -> None:
        """Remember the file as it is now (after a failed reload: report it once, not every poll)."""
        self.file_signature = self._signature()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _write(self) -> None:
        write_atomically(self.path, seal(self._key, self._image))
        self.file_signature = self._signature()

    def _mutate(self, change: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = change(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            image = conn.serialize()
            write_atomically(self.path, seal(self._key, image))
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from None
        except OSError:
            conn.deserialize(self._image)  # the write failed: memory goes back to what disk holds
            conn.execute("PRAGMA foreign_keys = ON")
            raise
        self._image = image
        self.file_signature = self._signature()
        return result

    def transaction(self, change: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``change`` as one transaction and persist it (for multi-entity writes)."""
        return self._mutate(change)

    def close(self) -> None:
        self._conn.close()

    # -- reads -------------------------------------------------------------------------------

    def _user(self, row: sqlite3.Row) -> User:
        conn = self._conn
        rules = _rule_rows(
            conn.execute("SELECT * FROM permissions WHERE user_id = ? ORDER BY id", (row["id"],))
        )
        groups = tuple(
            r[0]
            for r in conn.execute(
                "SELECT group_id FROM group_members WHERE user_id = ? ORDER BY group_id", (row["id"],)
            )
        )
        return User(
            id=row["id"],
            name=row["name"],
            access_key_id=row["access_key_id"],
            secret_access_key=row["secret_access_key"],
            enabled=bool(row["enabled"]),
            created_at=row["created_at"],
            auth_source=row["auth_source"],
            permissions=rules,
            group_ids=groups,
        )

    def _group(self, row: sqlite3.Row) -> Group:
        conn = self._conn
        rules = _rule_rows(
            conn.execute("SELECT * FROM group_permissions WHERE group_id = ? ORDER BY id", (row["id"],))
        )
        members = tuple(
            r[0]
            for r in conn.execute(
                "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id", (row["id"],)
            )
        )
        return Group(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            permissions=rules,
            member_ids=members,
            created_at=row["created_at"],
        )

    def users(self) -> list[User]:
        return [self._user(r) for r in self._conn.execute("SELECT * FROM users ORDER BY id")]

    def user(self, user_id: int) -> User:
        row = self._conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return self._user(row)

    def groups(self) -> list[Group]:
        return [self._group(r) for r in self._conn.execute("SELECT * FROM groups ORDER BY id")]

    def group(self, group_id: int) -> Group:
        row = self._conn.execute("SELECT * FROM groups WHERE id = ?", (group_id,)).fetchone()
        if row is None:
            raise NotFound(f"no group with id {group_id}")
        return self._group(row)

    def user_count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM users").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------

    @staticmethod
    def set_rules(
        conn: sqlite3.Connection, table: str, owner: str, owner_id: int, rules: Iterable[Permission]
    ) -> None:
        conn.execute(f"DELETE FROM {table} WHERE {owner} = ?", (owner_id,))
        conn.executemany(
            f"INSERT INTO {table} ({owner}, actions, resources, effect, conditions_json) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (
                    owner_id,
                    json.dumps(list(r.actions)),
                    json.dumps(list(r.resources)),
                    r.effect,
                    json.dumps(r.conditions) if r.conditions is not None else None,
                )
                for r in rules
            ],
        )

    def create_user(
        self,
        name: str,
        access_key_id: str,
        secret_access_key: str,
        *,
        enabled: bool = True,
        permissions: Iterable[Permission] = (),
        auth_source: str = "local",
    ) -> User:
        def change(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO users (name, access_key_id, secret_access_key, enabled, auth_source) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, access_key_id, secret_access_key, int(enabled), auth_source),
            )
            user_id = int(cur.lastrowid or 0)
            self.set_rules(conn, "permissions", "user_id", user_id, permissions)
            return user_id

        return self.user(self._mutate(change))

    def update_user(
        self,
        user_id: int,
        *,
        name: str | None = None,
        enabled: bool | None = None,
        permissions: Iterable[Permission] | None = None,
    ) -> User:
        self.user(user_id)

        def change(conn: sqlite3.Connection) -> None:
            if name is not None:
                conn.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))
            if enabled is not None:
                conn.execute("UPDATE users SET enabled = ? WHERE id = ?", (int(enabled), user_id))
            if permissions is not None:
                self.set_rules(conn, "permissions", "user_id", user_id, permissions)

        self._mutate(change)
        return self.user(user_id)

    def rotate_keys(self, user_id: int, access_key_id: str, secret_access_key: str) -> User:
        self.user(user_id)
        self._mutate(
            lambda conn: conn.execute(
                "UPDATE users SET access_key_id = ?, secret_access_key = ? WHERE id = ?",
                (access_key_id, secret_access_key, user_id),
            )
        )
        return self.user(user_id)

    def delete_user(self, user_id: int) -> User:
        user = self.user(user_id)
        self._mutate(lambda conn: conn.execute("DELETE FROM users WHERE id = ?", (user_id,)))
        return user

    def create_group(
        self,
        name: str,
        description: str = "",
        permissions: Iterable[Permission] = (),
        member_ids: Iterable[int] = (),
    ) -> Group:
        def change(conn: sqlite3.Connection) -> int:
            cur = conn.execute("INSERT INTO groups (name, description) VALUES (?, ?)", (name, description))
            group_id = int(cur.lastrowid or 0)
            self.set_rules(conn, "group_permissions", "group_id", group_id, permissions)
            for uid in member_ids:
                # Unknown ids are skipped silently, as upstream does.
                conn.execute(
                    "INSERT OR IGNORE INTO group_members (group_id, user_id) "
                    "SELECT ?, id FROM users WHERE id = ?",
                    (group_id, uid),
                )
            return group_id

        return self.group(self._mutate(change))

    def update_group(
        self,
        group_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
        permissions: Iterable[Permission] | None = None,
    ) -> Group:
        self.group(group_id)

        def change(conn: sqlite3.Connection) -> None:
            if name is not None:
                conn.execute("UPDATE groups SET name = ? WHERE id = ?", (name, group_id))
            if description is not None:
                conn.execute("UPDATE groups SET description = ? WHERE id = ?", (description, group_id))
            if permissions is not None:
                self.set_rules(conn, "group_permissions", "group_id", group_id, permissions)

        self._mutate(change)
        return self.group(group_id)

    def delete_group(self, group_id: int) -> Group:
        group = self.group(group_id)
        self._mutate(lambda conn: conn.execute("DELETE FROM groups WHERE id = ?", (group_id,)))
        return group

    def add_member(self, group_id: int, user_id: int) -> None:
        self.group(group_id)
        self.user(user_id)
        self._mutate(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)", (group_id, user_id)
            )
        )

    def remove_member(self, group_id: int, user_id: int) -> None:
        self.group(group_id)
        self._mutate(
            lambda conn: conn.execute(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
            )
        )

    def snapshot(self) -> tuple[list[User], list[Group]]:
        return self.users(), self.groups()
