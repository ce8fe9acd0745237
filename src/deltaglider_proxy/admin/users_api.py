"""IAM users, groups and memberships (control-plane.md §6.2).

Every mutation: admin session → declarative gate → validate → one store transaction → index
rebuilt (by the IAM service) → audit with the real principal → respond.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Any, TypeVar

from deltaglider_proxy.admin.guard import checked_session
from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest, empty, field_of, json_response
from deltaglider_proxy.admin.state import AdminState
from deltaglider_proxy.auth.sessions import Session
from deltaglider_proxy.iam.evaluate import Principal
from deltaglider_proxy.iam.model import (
    InvalidPolicy,
    Permission,
    parse_permissions,
    validate_access_key,
    validate_secret,
    validate_user_name,
)
from deltaglider_proxy.iam.store import Conflict, IamDatabase, NotFound
from deltaglider_proxy.s3api.http import Response

T = TypeVar("T")
_AKID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
LEGACY_ADMIN = "legacy-admin"
ALL = (Permission(effect="Allow", actions=("*",), resources=("*",)),)


def generate_access_key() -> str:
    return "AK" + "".join(secrets.choice(_AKID_ALPHABET) for _ in range(18))


def generate_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


def _id(req: ApiRequest, name: str) -> int:
    text = req.params[name]
    if not text.isdigit() or len(text) > 18:
        raise ApiError(404, "not_found", f"no such {name.removesuffix('_id')}: {text}")
    return int(text)


def _validated(check: Callable[[], T]) -> T:
    try:
        return check()
    except InvalidPolicy as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


async def _write(state: AdminState, change: Callable[[IamDatabase], T]) -> T:
    try:
        return await state.require_iam().write(change)
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, "conflict", f"name or access key already in use ({exc})") from None


async def _admin(state: AdminState, req: ApiRequest, *, gated: bool = True) -> Session:
    session = checked_session(req)
    if gated:
        state.declarative_gate(req)
    return session


async def list_users(state: AdminState, req: ApiRequest) -> Response:
    await _admin(state, req)
    if state.iam is None:
        return json_response(200, [])
    users = await state.iam.read(lambda db: db.users())
    return json_response(200, [u.as_json() for u in users])


def _migrate_legacy(state: AdminState, db: IamDatabase) -> None:
    """First IAM user while the bootstrap pair is in use: keep existing clients working (§2.1)."""
    pair = state.services.access.credentials.pair
    if pair is None or db.user_count() or any(u.access_key_id == pair.access_key_id for u in db.users()):
        return
    db.create_user(LEGACY_ADMIN, pair.access_key_id, pair.secret_access_key, permissions=ALL)


async def create_user(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    doc = await req.json()
    name = _validated(lambda: validate_user_name(doc.get("name")))
    akid = _validated(
        lambda: validate_access_key(field_of(doc, "access_key_id", str) or generate_access_key())
    )
    secret = _validated(lambda: validate_secret(field_of(doc, "secret_access_key", str) or generate_secret()))
    enabled = field_of(doc, "enabled", bool, True)
    permissions = _validated(lambda: parse_permissions(doc.get("permissions")))
    legacy_before = state.services.access.mode == "bootstrap"

    def change(db: IamDatabase) -> Any:
        if legacy_before:
            _migrate_legacy(state, db)
        return db.create_user(name, akid, secret, enabled=enabled, permissions=permissions)

    user = await _write(state, change)
    state.audit("create_user", session, req, name)
    return json_response(201, user.as_json(with_secret=True))


def _other_admins(state: AdminState, user_id: int) -> list[Principal]:
    index = state.services.access.index
    return [p for uid, p in index.by_user_id.items() if uid != user_id and p.enabled and p.is_admin]


def _guard_last_admin(state: AdminState, req: ApiRequest, user_id: int) -> None:
    """[D] §2.1: losing the last admin locks everyone out of the admin API; demand ?force=true."""
    index = state.services.access.index
    target = index.by_user_id.get(user_id)
    if target is None or not target.is_admin or not target.enabled or req.q("force") == "true":
        return
    if not _other_admins(state, user_id):
        raise ApiError(
            409,
            "last_admin",
            f"{target.name!r} is the last enabled admin user; add another admin first "
            "or repeat with ?force=true",
        )


async def update_user(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    user_id = _id(req, "id")
    doc = await req.json()
    name = _validated(lambda: validate_user_name(doc["name"])) if doc.get("name") is not None else None
    enabled = field_of(doc, "enabled", bool)
    permissions = _validated(lambda: parse_permissions(doc["permissions"])) if "permissions" in doc else None
    if enabled is False:
        _guard_last_admin(state, req, user_id)
    elif permissions is not None:
        current = await state.require_iam().read(lambda db: db.users())
        direct = next((len(u.permissions) for u in current if u.id == user_id), 0)
        before = state.services.access.index.by_user_id.get(user_id)
        if before is not None and not Principal("", "", permissions + before.rules[direct:]).is_admin:
            _guard_last_admin(state, req, user_id)
    user = await _write(
        state, lambda db: db.update_user(user_id, name=name, enabled=enabled, permissions=permissions)
    )
    if enabled is False:
        state.sessions.drop_user(user_id)
    state.audit("update_user", session, req, user.name)
    return json_response(200, user.as_json())


async def delete_user(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    user_id = _id(req, "id")
    _guard_last_admin(state, req, user_id)
    await _write(state, lambda db: db.delete_user(user_id))
    state.sessions.drop_user(user_id)
    state.audit("delete_user", session, req, str(user_id))
    return empty()


async def rotate_keys(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    user_id = _id(req, "id")
    doc = await req.json(required=False)
    akid = _validated(
        lambda: validate_access_key(field_of(doc, "access_key_id", str) or generate_access_key())
    )
    secret = _validated(lambda: validate_secret(field_of(doc, "secret_access_key", str) or generate_secret()))
    user = await _write(state, lambda db: db.rotate_keys(user_id, akid, secret))
    state.audit("rotate_keys", session, req, user.name)
    return json_response(200, user.as_json(with_secret=True))


async def list_groups(state: AdminState, req: ApiRequest) -> Response:
    await _admin(state, req)
    if state.iam is None:
        return json_response(200, [])
    groups = await state.iam.read(lambda db: db.groups())
    return json_response(200, [g.as_json() for g in groups])


def _group_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise ApiError(
            400, "invalid_request", "group name must be a non-empty string of at most 128 characters"
        )
    return value


async def create_group(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    doc = await req.json()
    name = _group_name(doc.get("name"))
    description = field_of(doc, "description", str, "")
    permissions = _validated(lambda: parse_permissions(doc.get("permissions")))
    members = field_of(doc, "member_ids", list, [])
    if not all(isinstance(m, int) and not isinstance(m, bool) for m in members):
        raise ApiError(400, "invalid_field", "member_ids: expected a list of user ids")
    group = await _write(state, lambda db: db.create_group(name, description, permissions, members))
    state.audit("create_group", session, req, name)
    return json_response(201, group.as_json())


async def update_group(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    group_id = _id(req, "id")
    doc = await req.json()
    name = _group_name(doc["name"]) if doc.get("name") is not None else None
    description = field_of(doc, "description", str)
    permissions = _validated(lambda: parse_permissions(doc["permissions"])) if "permissions" in doc else None
    group = await _write(
        state,
        lambda db: db.update_group(group_id, name=name, description=description, permissions=permissions),
    )
    state.audit("update_group", session, req, group.name)
    return json_response(200, group.as_json())


async def delete_group(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    group_id = _id(req, "id")
    group = await _write(state, lambda db: db.delete_group(group_id))
    state.audit("delete_group", session, req, group.name)
    return empty()


async def add_member(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    group_id = _id(req, "id")
    doc = await req.json()
    user_id = field_of(doc, "user_id", int)
    if user_id is None:
        raise ApiError(400, "invalid_field", "user_id: required")
    await _write(state, lambda db: db.add_member(group_id, user_id))
    state.audit("add_member", session, req, f"group:{group_id}+user:{user_id}")
    return json_response(200, {"ok": True})


async def remove_member(state: AdminState, req: ApiRequest) -> Response:
    session = await _admin(state, req)
    group_id = _id(req, "id")
    user_id = _id(req, "user_id")
    await _write(state, lambda db: db.remove_member(group_id, user_id))
    state.audit("remove_member", session, req, f"group:{group_id}+user:{user_id}")
    return empty()
