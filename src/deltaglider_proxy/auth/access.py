"""The runtime authentication state (control-plane.md §2.1): ``open``, ``bootstrap`` or ``iam``.

The mode follows the IAM index: with at least one IAM user it is ``iam``; with none it falls
back to what the configuration allows — the bootstrap key pair, or open access only when
``authentication: none`` was chosen explicitly. Deleting the last IAM user therefore never opens
a proxy that was configured with keys ([D] §2.1).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal

from deltaglider_proxy.auth.credentials import Credentials
from deltaglider_proxy.iam.evaluate import BOOTSTRAP, Principal
from deltaglider_proxy.iam.index import IamIndex

Mode = Literal["open", "bootstrap", "iam"]


@dataclass
class AccessControl:
    credentials: Credentials
    index: IamIndex = field(default_factory=IamIndex)

    @classmethod
    def open_mode(cls) -> AccessControl:
        return cls(Credentials("open", None))

    def use_index(self, index: IamIndex) -> None:
        self.index = index  # one reference swap: a request sees the old or the new index

    @property
    def mode(self) -> Mode:
        if self.index.user_count:
            return "iam"
        return self.credentials.mode

    def secret_for(self, access_key_id: str) -> str | None:
        """SigV4's credential lookup for the current mode (disabled users are rejected later)."""
        index = self.index
        if index.user_count:
            return index.secrets.get(access_key_id)
        return self.credentials.secret_for(access_key_id)

    def principal_for(self, access_key_id: str) -> Principal | None:
        index = self.index
        if index.user_count:
            return index.by_access_key.get(access_key_id)
        pair = self.credentials.pair
        if pair is not None and hmac.compare_digest(access_key_id.encode(), pair.access_key_id.encode()):
            return Principal(BOOTSTRAP.name, pair.access_key_id, BOOTSTRAP.rules)
        return None
