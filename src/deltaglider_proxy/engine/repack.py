"""Re-pack one deltaspace into a delta strategy (``deltaglider-proxy repack``, issue 8).

Works object by object in created_at order, each step one atomic backend write (a new ``.delta``
replacing the old, or a delta written before its passthrough copy is removed), so a kill at any
point leaves every object readable, and a re-run skips what is already in the target form:

* ``reference``: every delta based on another object is re-encoded against reference.bin (the
  form the deltaglider CLI reads). Depths only shrink, so objects still based on one being
  rewritten stay valid.
* ``chain``: the walk keeps the previous delta in order as the base for the next object (up to
  ``max_depth``, then reference.bin). Passthrough objects are encoded when that saves enough
  (ratio rule); a delta is rewritten only if the new delta is smaller. An object other deltas
  are based on is left as it is (rewriting it could make it deeper than its dependants).

Run it while no proxy writes to the deltaspace: the proxy's locks are per process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from deltaglider_proxy.engine.bases import Candidate, reference_candidate
from deltaglider_proxy.engine.chains import ChainBroken, Chains, Level, encode_waiting, join
from deltaglider_proxy.engine.dependants import as_passthrough, delta_record
from deltaglider_proxy.engine.eligibility import Strategy
from deltaglider_proxy.engine.keys import ObjectKey, parse_key
from deltaglider_proxy.engine.store import DeltaStore, same_version
from deltaglider_proxy.engine.transfer import stream_to_file
from deltaglider_proxy.storage.base import CommonPrefix, StoredObject
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, REFERENCE_NAME, FileMetadata

Outcome = str  # "rewritten" | "kept" | "skipped"


@dataclass(frozen=True)
class Item:
    key: ObjectKey
    stored: StoredObject
    # A passthrough copy of the same version left beside the delta by an interrupted step.
    leftover: str | None = None

    @property
    def record(self) -> FileMetadata:
        assert self.stored.record is not None
        return self.stored.record

    @property
    def is_delta(self) -> bool:
        return self.record.note == "delta" and self.stored.name.endswith(DELTA_SUFFIX)


@dataclass
class Footprint:
    objects: int = 0
    stored_bytes: int = 0  # everything in the deltaspace, reference.bin included


class Repacker:
    def __init__(self, store: DeltaStore) -> None:
        self.store = store
        self.backend = store.backend
        self.chains: Chains = store.chains

    async def footprint(self, bucket: str, prefix: str) -> Footprint:
        found = Footprint()
        async for entry in self.backend.list(bucket, f"{prefix}/" if prefix else "", delimiter="/"):
            if isinstance(entry, CommonPrefix):
                continue
            found.stored_bytes += entry.size
            if entry.name.rsplit("/", 1)[-1] != REFERENCE_NAME:
                found.objects += 1
        return found

    async def plan(self, bucket: str, prefix: str) -> list[Item]:
        """The deltaspace's managed objects (one per key: the variant readers see) by created_at."""
        chosen: dict[str, StoredObject] = {}
        leftovers: dict[str, str] = {}
        async for entry in self.backend.list(bucket, f"{prefix}/" if prefix else "", delimiter="/"):
            if isinstance(entry, CommonPrefix) or entry.name.rsplit("/", 1)[-1] == REFERENCE_NAME:
                continue
            loaded = entry if entry.record_loaded else await self.backend.head(bucket, entry.name)
            if loaded is None or loaded.record is None or loaded.record.note == "reference":
                continue
            logical = entry.name[: -len(DELTA_SUFFIX)] if entry.name.endswith(DELTA_SUFFIX) else entry.name
            other = chosen.get(logical)
            if other is None:
                chosen[logical] = loaded
                continue
            winner, loser = (loaded, other) if _newer(loaded, other) else (other, loaded)
            chosen[logical] = winner
            if winner.name.endswith(DELTA_SUFFIX) and _same(winner, loser):
                leftovers[logical] = loser.name
        items = [Item(parse_key(k), s, leftovers.get(k)) for k, s in chosen.items()]
        return sorted(items, key=lambda i: (i.record.created_at, i.key.key))

    async def run(
        self, bucket: str, prefix: str, strategy: Strategy, max_depth: int, items: list[Item]
    ) -> AsyncIterator[tuple[Item, Outcome]]:
        reference = await self.backend.head(bucket, join(prefix, REFERENCE_NAME))
        if reference is None or reference.record is None or reference.record.note != "reference":
            for item in items:
                yield item, "skipped"  # nothing to encode against
            return
        previous: Item | None = None
        for item in items:
            async with self.store.locks.hold(bucket, prefix):
                if strategy == "reference":
                    outcome = await self._to_reference(bucket, item, reference.record)
                else:
                    outcome = await self._to_chain(bucket, item, previous, max_depth, reference.record)
                    if item.is_delta or outcome == "rewritten":
                        now = await self.backend.head(bucket, item.key.delta_name)
                        if now is not None and now.record is not None and now.record.note == "delta":
                            previous = Item(item.key, now)
                if item.leftover is not None:
                    delta = await self.backend.head(bucket, item.key.delta_name)
                    if delta is not None and delta.record is not None and delta.record.note == "delta":
                        await self.backend.delete(bucket, item.leftover)
            yield item, outcome

    async def _current(self, bucket: str, item: Item) -> bool:
        """Whether the object is still the version planned (nobody wrote it meanwhile)."""
        return same_version(await self.backend.head(bucket, item.stored.name), item.record)

    async def _to_reference(self, bucket: str, item: Item, reference: FileMetadata) -> Outcome:
        if not item.is_delta or item.record.base_name == REFERENCE_NAME:
            return "skipped"
        if not await self._current(bucket, item):
            return "skipped"
        levels = reference_candidate(item.key, reference).levels
        await self.store.dependants.rebase(bucket, item.key.prefix, item.stored, levels)
        return "rewritten"

    async def _to_chain(
        self, bucket: str, item: Item, previous: Item | None, max_depth: int, reference: FileMetadata
    ) -> Outcome:
        fallback = reference_candidate(item.key, reference)
        candidate = fallback
        usable = previous is not None and previous.record.file_sha256 != reference.file_sha256
        if previous is not None and usable and previous.record.depth < max_depth:
            try:
                below = await self.chains.bases(bucket, item.key.prefix, previous.record)
            except ChainBroken:
                below = []  # an unreadable previous object is no base; reference.bin it is
            if below:
                levels = [Level(previous.stored.name, previous.record.file_sha256, previous.record), *below]
                candidate = Candidate(levels, previous.record.depth + 1)
        if item.is_delta:
            if item.record.base_name == candidate.base.name.rsplit("/", 1)[-1].removesuffix(DELTA_SUFFIX):
                return "skipped"  # already in the target form (a resumed run)
            if await self.store.dependants.find(bucket, item.key):
                return "kept"
        if not await self._current(bucket, item):
            return "skipped"
        tries = [candidate] if candidate.is_reference else [candidate, fallback]
        return await self._encode(bucket, item, tries)

    async def _encode(self, bucket: str, item: Item, tries: list[Candidate]) -> Outcome:
        spool = self.chains.spool
        prefix = item.key.prefix
        record = item.record
        threshold = self.store.policies.for_bucket(bucket).max_delta_ratio
        best = record.delta_size if item.is_delta and record.delta_size is not None else None
        source = spool.new_path(".src")
        out = spool.new_path(".delta")
        try:
            if item.is_delta:
                async with self.chains.object_content(bucket, prefix, item.stored.name, record) as content:
                    await asyncio.to_thread(_link_or_copy, content, source)
            else:
                await stream_to_file(self.backend.read(bucket, item.stored.name), source)
            for candidate in tries:
                async with self.chains.content(bucket, prefix, candidate.levels) as base_path:
                    size = await encode_waiting(self.chains.codec, base_path, source, out)
                if not record.file_size or size / record.file_size >= threshold:
                    continue
                if best is not None and size >= best:
                    continue
                new = delta_record(
                    as_passthrough(record), item.key.filename, candidate.base, size, candidate.depth
                )
                if not item.is_delta:
                    # A stale delta of this key (left beside the newer passthrough) may be a base.
                    await self.store.dependants.release(bucket, item.key)
                await self.backend.write(bucket, item.key.delta_name, out, new, move=True)
                if not item.is_delta:
                    await self.backend.delete(bucket, item.key.passthrough_name)
                return "rewritten"
            return "kept"
        finally:
            await asyncio.to_thread(source.unlink, True)
            await asyncio.to_thread(out.unlink, True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _newer(a: StoredObject, b: StoredObject) -> bool:
    """Readers' rule when both variants exist: newer created_at wins, a tie goes to the delta."""

    def created(obj: StoredObject) -> datetime:
        assert obj.record is not None
        return obj.record.created_at

    if created(a) != created(b):
        return created(a) > created(b)
    return a.name.endswith(DELTA_SUFFIX)


def _same(a: StoredObject, b: StoredObject) -> bool:
    return (
        a.record is not None
        and b.record is not None
        and a.record.file_sha256 == b.record.file_sha256
        and a.record.created_at == b.record.created_at
    )
