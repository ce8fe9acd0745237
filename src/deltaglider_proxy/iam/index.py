"""The in-memory IAM index (control-plane.md §3.7): access key → principal with effective rules.

Built from one consistent read of the store and swapped as a whole, so a request sees either
the old or the new IAM state, never a mix. The version counter lets tests and UIs wait for a
rebuild (``GET /_/api/admin/iam/version``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from deltaglider_proxy.iam.evaluate import Principal
from deltaglider_proxy.iam.model import Group, User

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IamIndex:
    by_access_key: Mapping[str, Principal] = field(default_factory=lambda: MappingProxyType({}))
    by_user_id: Mapping[int, Principal] = field(default_factory=lambda: MappingProxyType({}))
    secrets: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def user_count(self) -> int:
        return len(self.by_user_id)


def build_index(users: list[User], groups: list[Group]) -> IamIndex:
    group_rules = {g.id: g.permissions for g in groups}
    by_key: dict[str, Principal] = {}
    by_id: dict[int, Principal] = {}
    secrets: dict[str, str] = {}
    for user in users:
        rules = user.permissions + tuple(r for gid in user.group_ids for r in group_rules.get(gid, ()))
        principal = Principal(
            name=user.name,
            access_key_id=user.access_key_id,
            rules=rules,
            user_id=user.id,
            enabled=user.enabled,
        )
        if user.enabled and not rules:
            log.warning(
                "IAM user %r is enabled but has no permissions: every request will be denied", user.name
            )
        by_key[user.access_key_id] = principal
        by_id[user.id] = principal
        secrets[user.access_key_id] = user.secret_access_key
    return IamIndex(MappingProxyType(by_key), MappingProxyType(by_id), MappingProxyType(secrets))
