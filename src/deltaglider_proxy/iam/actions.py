"""Request → verb mapping (control-plane.md §3.3).

"Bucket-level" means the request names no key. The verbs are what permissions grant:
``read``, ``write``, ``delete``, ``list``, ``admin`` (and ``*`` for all of them).
"""

from __future__ import annotations

from collections.abc import Collection

VERB_TO_ACTION = {
    "read": "s3:GetObject",
    "write": "s3:PutObject",
    "delete": "s3:DeleteObject",
    "list": "s3:ListBucket",
    "admin": "s3:CreateBucket",
    "*": "s3:*",
}


def verb_for(method: str, bucket: str | None, key: str | None, query: Collection[str]) -> str:
    bucket_level = key is None
    if method in ("GET", "HEAD"):
        return "list" if bucket_level else "read"
    if method == "PUT":
        return "admin" if bucket_level else "write"
    if method == "DELETE":
        return "admin" if bucket_level else "delete"
    if method == "POST":
        return "delete" if "delete" in query else "write"
    return "admin"
