"""Declarative IAM (control-plane.md §3.10): users and groups as code in ``access:``.

The YAML lists are validated completely before anything is written; the diff matches entities
by name (equal → nothing, different → update keeping the id, missing → create, extra → delete)
and is applied in one transaction. An empty or absent ``secret_access_key`` on an update means
"keep the stored secret" [D]; ``${env:NAME}`` in the YAML is expanded by the config loader.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deltaglider_proxy.iam.model import (
    Group,
    InvalidPolicy,
    Permission,
    User,
    parse_permissions,
    validate_access_key,
    validate_secret,
    validate_user_name,
)
from deltaglider_proxy.iam.store import IamDatabase

_GROUP_FIELDS = {"name", "description", "permissions"}
_USER_FIELDS = {"name", "access_key_id", "secret_access_key", "enabled", "groups", "permissions"}


class ReconcileError(ValueError):
    """Validation failed; nothing was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"declarative IAM reconcile failed (no state changed): {reason}")


@dataclass(frozen=True)
class DeclaredGroup:
    name: str
    description: str
    permissions: tuple[Permission, ...]


@dataclass(frozen=True)
class DeclaredUser:
    name: str
    access_key_id: str
    secret_access_key: str  # "" = keep the stored one (updates only)
    enabled: bool
    groups: tuple[str, ...]
    permissions: tuple[Permission, ...]


@dataclass
class Plan:
    groups_create: list[DeclaredGroup] = field(default_factory=list)
    groups_update: list[tuple[int, DeclaredGroup]] = field(default_factory=list)
    groups_delete: list[Group] = field(default_factory=list)
    users_create: list[DeclaredUser] = field(default_factory=list)
    users_update: list[tuple[int, DeclaredUser]] = field(default_factory=list)
    users_delete: list[User] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.groups_create,
                self.groups_update,
                self.groups_delete,
                self.users_create,
                self.users_update,
                self.users_delete,
            )
        )

    def counts(self) -> str:
        return (
            f"users(+{len(self.users_create)}/~{len(self.users_update)}/-{len(self.users_delete)}) "
            f"groups(+{len(self.groups_create)}/~{len(self.groups_update)}/-{len(self.groups_delete)}) "
            "providers(+0/~0/-0) mapping_rules=keep"
        )

    def preview_line(self) -> str:
        if self.empty:
            return "declarative IAM preview: no IAM changes (idempotent apply)"
        return f"declarative IAM preview: {self.counts()}"


def _fields(doc: object, allowed: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(doc, dict):
        raise ReconcileError(f"{what}: expected a mapping")
    unknown = set(doc) - allowed
    if unknown:
        raise ReconcileError(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    return doc


def parse_declared(
    users_doc: list[dict[str, Any]], groups_doc: list[dict[str, Any]]
) -> tuple[list[DeclaredUser], list[DeclaredGroup]]:
    groups: list[DeclaredGroup] = []
    for index, raw in enumerate(groups_doc):
        doc = _fields(raw, _GROUP_FIELDS, f"iam_groups[{index}]")
        name = doc.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ReconcileError(f"iam_groups[{index}]: name is required")
        try:
            permissions = parse_permissions(doc.get("permissions"))
        except InvalidPolicy as exc:
            raise ReconcileError(f"group '{name}': {exc}") from None
        groups.append(DeclaredGroup(name, str(doc.get("description") or ""), permissions))
    group_names = [g.name for g in groups]
    if len(set(group_names)) != len(group_names):
        raise ReconcileError("duplicate group names in access.iam_groups")
    users: list[DeclaredUser] = []
    for index, raw in enumerate(users_doc):
        doc = _fields(raw, _USER_FIELDS, f"iam_users[{index}]")
        label = f"user '{doc.get('name')}'"
        try:
            name = validate_user_name(doc.get("name"))
            akid = validate_access_key(doc.get("access_key_id"))
            secret = str(doc.get("secret_access_key") or "")
            if secret:
                validate_secret(secret)
            permissions = parse_permissions(doc.get("permissions"))
        except InvalidPolicy as exc:
            raise ReconcileError(f"{label}: {exc}") from None
        member_of = doc.get("groups") or []
        if not isinstance(member_of, list) or not all(isinstance(g, str) for g in member_of):
            raise ReconcileError(f"{label}: groups must be a list of group names")
        missing = [g for g in member_of if g not in group_names]
        if missing:
            raise ReconcileError(f"{label}: unknown group(s) {', '.join(missing)} (not in access.iam_groups)")
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ReconcileError(f"{label}: enabled must be true or false")
        users.append(DeclaredUser(name, akid, secret, enabled, tuple(member_of), permissions))
    for attr, what in (("name", "user names"), ("access_key_id", "user access keys")):
        values = [getattr(u, attr) for u in users]
        if len(set(values)) != len(values):
            raise ReconcileError(f"duplicate {what} in access.iam_users")
    return users, groups


def _same_rules(a: tuple[Permission, ...], b: tuple[Permission, ...]) -> bool:
    return sorted(p.identity() for p in a) == sorted(p.identity() for p in b)


def plan(db: IamDatabase, users: list[DeclaredUser], groups: list[DeclaredGroup]) -> Plan:
    result = Plan()
    current_groups = {g.name: g for g in db.groups()}
    group_names_by_id = {g.id: g.name for g in current_groups.values()}
    for group in groups:
        existing = current_groups.get(group.name)
        if existing is None:
            result.groups_create.append(group)
        elif existing.description != group.description or not _same_rules(
            existing.permissions, group.permissions
        ):
            result.groups_update.append((existing.id, group))
    declared_group_names = {g.name for g in groups}
    result.groups_delete = [g for g in current_groups.values() if g.name not in declared_group_names]
    current_users = {u.name: u for u in db.users()}
    by_key = {u.access_key_id: u for u in current_users.values()}
    for user in users:
        holder = by_key.get(user.access_key_id)
        if holder is not None and holder.name != user.name:
            raise ReconcileError(
                f"user '{user.name}': access key {user.access_key_id} belongs to existing user "
                f"'{holder.name}'"
            )
        stored = current_users.get(user.name)
        if stored is None:
            if not user.secret_access_key:
                raise ReconcileError(f"user '{user.name}': secret_access_key is required for a new user")
            result.users_create.append(user)
            continue
        current_group_names = sorted(group_names_by_id.get(gid, "") for gid in stored.group_ids)
        if (
            stored.access_key_id != user.access_key_id
            or (user.secret_access_key and stored.secret_access_key != user.secret_access_key)
            or stored.enabled != user.enabled
            or not _same_rules(stored.permissions, user.permissions)
            or current_group_names != sorted(user.groups)
        ):
            result.users_update.append((stored.id, user))
    declared_user_names = {u.name for u in users}
    result.users_delete = [u for u in current_users.values() if u.name not in declared_user_names]
    return result


def apply(db: IamDatabase, result: Plan, users: list[DeclaredUser]) -> None:
    """Write ``result`` in one transaction (memberships follow the YAML for every declared user)."""
    if result.empty:
        return

    def change(conn: sqlite3.Connection) -> None:
        for user_row in result.users_delete:
            conn.execute("DELETE FROM users WHERE id = ?", (user_row.id,))
        for group_row in result.groups_delete:
            conn.execute("DELETE FROM groups WHERE id = ?", (group_row.id,))
        for gid, group in result.groups_update:
            conn.execute("UPDATE groups SET description = ? WHERE id = ?", (group.description, gid))
            db.set_rules(conn, "group_permissions", "group_id", gid, group.permissions)
        for group in result.groups_create:
            cur = conn.execute(
                "INSERT INTO groups (name, description) VALUES (?, ?)", (group.name, group.description)
            )
            db.set_rules(conn, "group_permissions", "group_id", int(cur.lastrowid or 0), group.permissions)
        group_ids = {row[1]: row[0] for row in conn.execute("SELECT id, name FROM groups")}
        touched: list[tuple[int, DeclaredUser]] = list(result.users_update)
        for uid, user in result.users_update:
            conn.execute(
                "UPDATE users SET access_key_id = ?, enabled = ? WHERE id = ?",
                (user.access_key_id, int(user.enabled), uid),
            )
            if user.secret_access_key:
                conn.execute(
                    "UPDATE users SET secret_access_key = ? WHERE id = ?", (user.secret_access_key, uid)
                )
            db.set_rules(conn, "permissions", "user_id", uid, user.permissions)
        for user in result.users_create:
            cur = conn.execute(
                "INSERT INTO users (name, access_key_id, secret_access_key, enabled) VALUES (?, ?, ?, ?)",
                (user.name, user.access_key_id, user.secret_access_key, int(user.enabled)),
            )
            uid = int(cur.lastrowid or 0)
            db.set_rules(conn, "permissions", "user_id", uid, user.permissions)
            touched.append((uid, user))
        for uid, user in touched:
            conn.execute("DELETE FROM group_members WHERE user_id = ?", (uid,))
            conn.executemany(
                "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)",
                [(group_ids[name], uid) for name in user.groups],
            )

    db.transaction(change)


def summary(db: IamDatabase, result: Plan) -> str:
    return (
        f"declarative IAM reconciled: {db.user_count()} users total, {len(db.groups())} groups total, "
        f"0 providers total — {result.counts().replace(' mapping_rules=keep', ' mapping_rules=0')}"
    )
