"""``GET /_/api/admin/audit?limit=N``: the audit ring, newest first (control-plane.md §10.1)."""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import parse_qs

from deltaglider_proxy.admin.jsonresp import json_response
from deltaglider_proxy.observability.audit import DEFAULT_READ_LIMIT, MAX_READ_LIMIT, AuditRing
from deltaglider_proxy.s3api.http import Response


def audit_entries(ring: AuditRing, query_string: str) -> Response:
    raw = (parse_qs(query_string).get("limit") or [""])[0].strip()
    if raw and not raw.isdigit():
        message = f"limit must be a whole number from 1 to {MAX_READ_LIMIT}, got {raw!r}"
        return json_response(400, {"error": "invalid_limit", "message": message})
    # Out of range is clamped to 1…500, as upstream does; missing means 100.
    limit = max(1, min(MAX_READ_LIMIT, int(raw))) if raw else DEFAULT_READ_LIMIT
    entries = ring.recent(limit)
    return json_response(200, {"entries": [asdict(e) for e in entries], "limit": limit})
