"""Which base a new delta is encoded against (``delta_strategy``, issue 8).

``reference``: always the deltaspace's reference.bin (upstream; the deltaglider CLI reads it).
``chain``: first the deltaspace's *tip* — its most recently stored delta — while the tip's depth is
below ``max_chain_depth``; reference.bin as the fallback (tip too deep, dissimilar, or saving too
little). The tip is remembered per deltaspace in memory and checked with one HEAD per use; after a
restart (or when it vanished) it is found again as the newest delta by created_at in a listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from deltaglider_proxy.engine.chains import ChainBroken, Chains, Level, join
from deltaglider_proxy.engine.dependants import deltas_in
from deltaglider_proxy.engine.eligibility import CompressionPolicy
from deltaglider_proxy.engine.keys import ObjectKey
from deltaglider_proxy.storage.base import Backend, StoredObject
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, REFERENCE_NAME, FileMetadata

TIP_TABLE_ENTRIES = 4096


@dataclass(frozen=True)
class Candidate:
    """A base to try: ``levels[0]`` is the base itself, the rest its chain down to reference.bin."""

    levels: list[Level]
    depth: int  # depth the new delta gets

    @property
    def base(self) -> Level:
        return self.levels[0]

    @property
    def is_reference(self) -> bool:
        return self.base.record is None


def reference_candidate(key: ObjectKey, reference: FileMetadata) -> Candidate:
    return Candidate([Level(key.reference_name, reference.file_sha256, None)], 1)


class BaseChooser:
    def __init__(self, backend: Backend, chains: Chains) -> None:
        self.backend = backend
        self.chains = chains
        self._tips: dict[tuple[str, str], str] = {}

    async def candidates(
        self, bucket: str, key: ObjectKey, policy: CompressionPolicy, reference: FileMetadata
    ) -> list[Candidate]:
        """Bases to try for ``key``, best first; the last is always reference.bin."""
        fallback = reference_candidate(key, reference)
        if policy.strategy != "chain":
            return [fallback]
        tip = await self.tip(bucket, key.prefix)
        if tip is None or tip.record is None or tip.name == key.delta_name:
            # Never the object being replaced: its delta is about to be overwritten.
            return [fallback]
        if tip.record.depth >= policy.max_chain_depth or tip.record.file_sha256 == reference.file_sha256:
            # Too deep, or the very bytes of reference.bin (the version that seeded it): one hop less.
            return [fallback]
        top = Level(tip.name, tip.record.file_sha256, tip.record)
        if self.chains.references.has(bucket, key.prefix, top.sha256):
            # The tip's verified bytes are cached (usually adopted from its own PUT): encoding
            # against them needs nothing below, so no walk (up to a HEAD per level) per PUT.
            return [Candidate([top], tip.record.depth + 1), fallback]
        try:
            below = await self.chains.bases(bucket, key.prefix, tip.record)
        except ChainBroken:
            self.forget(bucket, key.prefix)
            return [fallback]
        if below[-1].sha256 != reference.file_sha256:
            return [fallback]
        return [Candidate([top, *below], tip.record.depth + 1), fallback]

    def advance(self, bucket: str, key: ObjectKey) -> None:
        """``key`` was just stored as a delta: it is the deltaspace's new tip."""
        self._tips.pop((bucket, key.prefix), None)
        self._tips[(bucket, key.prefix)] = key.filename
        while len(self._tips) > TIP_TABLE_ENTRIES:
            self._tips.pop(next(iter(self._tips)))

    def forget(self, bucket: str, prefix: str) -> None:
        self._tips.pop((bucket, prefix), None)

    async def tip(self, bucket: str, prefix: str) -> StoredObject | None:
        filename = self._tips.get((bucket, prefix))
        if filename is not None:
            stored = await self.backend.head(bucket, join(prefix, filename) + DELTA_SUFFIX)
            if stored is not None and stored.record is not None and stored.record.note == "delta":
                return stored
            self.forget(bucket, prefix)
        deltas = await deltas_in(self.backend, bucket, prefix)
        newest = max(
            deltas,
            key=lambda d: d.record.created_at if d.record else datetime.min.replace(tzinfo=UTC),
            default=None,
        )
        if newest is not None:
            name = newest.name.rsplit("/", 1)[-1][: -len(DELTA_SUFFIX)]
            if name != REFERENCE_NAME:
                self._tips[(bucket, prefix)] = name
        return newest
