"""Dry run of declarative IAM (control-plane.md §3.10.5): what a reconcile would change."""

from __future__ import annotations

from typing import Any

import yaml

from deltaglider_proxy.admin.guard import checked_session
from deltaglider_proxy.admin.jsonapi import ApiError, ApiRequest, json_response
from deltaglider_proxy.admin.state import AdminState
from deltaglider_proxy.iam.declarative import ReconcileError
from deltaglider_proxy.iam.service import EmptyDeclaration
from deltaglider_proxy.s3api.http import Response

REFUSED = (
    "declarative IAM preview: flip to declarative mode with empty iam_users / iam_groups would be REFUSED by "
    "the live apply (would wipe the DB). Add IAM content to the YAML first."
)


def _list(doc: dict[str, Any], name: str, default: list[dict[str, Any]]) -> list[dict[str, Any]]:
    value = doc.get(name, default)
    if not isinstance(value, list):
        raise ApiError(400, "invalid_field", f"{name}: expected a list")
    return value


async def validate(state: AdminState, req: ApiRequest) -> Response:
    checked_session(req)
    iam = state.require_iam()
    doc = await req.json(required=False)
    users = _list(doc, "iam_users", state.declared_users)
    groups = _list(doc, "iam_groups", state.declared_groups)
    try:
        plan = await iam.reconcile(users, groups, dry_run=True)
    except EmptyDeclaration:
        return json_response(200, {"ok": True, "warnings": [REFUSED]})
    except ReconcileError as exc:
        line = (
            "declarative IAM preview REJECTED at validation (live apply would return this error verbatim): "
            f"{exc}"
        )
        return json_response(422, {"error": "iam_reconcile_failed", "message": str(exc), "warnings": [line]})
    diff = {
        "users": {
            "create": [u.name for u in plan.users_create],
            "update": [u.name for _, u in plan.users_update],
            "delete": [u.name for u in plan.users_delete],
        },
        "groups": {
            "create": [g.name for g in plan.groups_create],
            "update": [g.name for _, g in plan.groups_update],
            "delete": [g.name for g in plan.groups_delete],
        },
    }
    return json_response(200, {"ok": True, "warnings": [plan.preview_line()], "diff": diff})


def _rules(permissions: Any) -> list[dict[str, Any]]:
    out = []
    for p in permissions:
        rule: dict[str, Any] = {
            "effect": p.effect,
            "actions": list(p.actions),
            "resources": list(p.resources),
        }
        if p.conditions is not None:
            rule["conditions"] = p.conditions
        out.append(rule)
    return out


async def export(state: AdminState, req: ApiRequest) -> Response:
    """The database as an ``access:`` document (§3.10.8); secrets redacted to "" (= keep on apply)."""
    checked_session(req)
    iam = state.require_iam()
    users, groups = await iam.read(lambda db: db.snapshot())
    names = {g.id: g.name for g in groups}
    doc = {
        "access": {
            "iam_mode": "declarative",
            "iam_groups": [
                {"name": g.name, "description": g.description, "permissions": _rules(g.permissions)}
                for g in groups
            ],
            "iam_users": [
                {
                    "name": u.name,
                    "access_key_id": u.access_key_id,
                    "secret_access_key": "",
                    "enabled": u.enabled,
                    "groups": [names[gid] for gid in u.group_ids if gid in names],
                    "permissions": _rules(u.permissions),
                }
                for u in users
            ],
        }
    }
    body = yaml.safe_dump(doc, sort_keys=False).encode()
    return Response(
        status=200, headers=[("content-type", "application/yaml"), ("cache-control", "no-store")], body=body
    )
