"""Public prefixes: anonymous GET/HEAD/LIST limited to chosen prefixes (storage.md §10.5)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from deltaglider_proxy.config.model import BucketPolicyConfig

log = logging.getLogger(__name__)


def normalise_prefixes(bucket: str, policy: BucketPolicyConfig) -> tuple[str, ...]:
    """The bucket's public prefixes, cleaned as the spec says; warnings name the bucket."""
    raw = [""] if policy.public else list(policy.public_prefixes)
    cleaned: set[str] = set()
    for value in raw:
        prefix = value[1:] if value.startswith("/") else value
        if (value and not prefix.strip("/")) or ".." in prefix or "\x00" in prefix or "//" in prefix:
            log.warning("buckets.%s.public_prefixes: ignoring unsafe prefix %r", bucket, value)
            continue
        if prefix == "":
            log.warning("buckets.%s: the whole bucket is readable without credentials", bucket)
        elif not prefix.endswith("/"):
            log.warning(
                "buckets.%s.public_prefixes: %r has no trailing '/' and also matches %r-anything",
                bucket,
                value,
                prefix,
            )
        cleaned.add(prefix)
    return tuple(sorted(cleaned))


class PublicPrefixes:
    """Which unsigned reads a bucket admits. Signed requests never use this grant."""

    def __init__(self, buckets: Mapping[str, BucketPolicyConfig]) -> None:
        self._prefixes: dict[str, tuple[str, ...]] = {}
        for name, policy in buckets.items():
            prefixes = normalise_prefixes(name.lower(), policy)
            if prefixes:
                self._prefixes[name.lower()] = prefixes

    def prefixes(self, bucket: str) -> tuple[str, ...]:
        return self._prefixes.get(bucket, ())

    def admits_object(self, bucket: str, key: str) -> bool:
        return any(key.startswith(p) for p in self.prefixes(bucket))

    def admits_listing(self, bucket: str, list_prefix: str) -> bool:
        """A listing is admitted when it can contain public keys (it is filtered afterwards)."""
        return any(list_prefix.startswith(p) or p.startswith(list_prefix) for p in self.prefixes(bucket))

    def shows_prefix(self, bucket: str, common_prefix: str) -> bool:
        """A rolled-up prefix is shown when it holds public keys or leads to them."""
        return self.admits_listing(bucket, common_prefix)
