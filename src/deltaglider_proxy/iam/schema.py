"""Schema of the IAM/config database and its migrations (control-plane.md §3.8).

``PRAGMA user_version`` records how many migrations have run; each migration is applied once,
in order, inside the transaction that bumps the version. Never edit a released migration —
append a new one.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: users, groups, rules and memberships; names unique ([D] §3.1: declarative IAM keys by name).
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        access_key_id TEXT NOT NULL UNIQUE,
        secret_access_key TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL DEFAULT (datetime('now')),
        auth_source TEXT NOT NULL DEFAULT 'local'
    );
    CREATE TABLE permissions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        actions TEXT NOT NULL,
        resources TEXT NOT NULL,
        effect TEXT NOT NULL DEFAULT 'Allow',
        conditions_json TEXT
    );
    CREATE INDEX permissions_user ON permissions(user_id);
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL DEFAULT (datetime('now'))
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE TABLE group_permissions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        actions TEXT NOT NULL,
        resources TEXT NOT NULL,
        effect TEXT NOT NULL DEFAULT 'Allow',
        conditions_json TEXT
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it started at."""
    (start,) = conn.execute("PRAGMA user_version").fetchone()
    if start > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the IAM database has schema version {start}, newer than this release understands "
            f"({SCHEMA_VERSION}); upgrade the proxy"
        )
    for version in range(start, SCHEMA_VERSION):
        # executescript commits first, so the whole step runs in one explicit transaction.
        conn.executescript(f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;")
    return int(start)
