"""Objects whose delta is based on another object (``chain`` strategy), and moving them off it.

Before a delta object is deleted or replaced, every delta based on it (its direct dependants) is
re-encoded against the doomed object's own base, which is strictly shallower, so no depth on the
chain below grows. Each dependant is replaced by one atomic backend write; the doomed object stays
in place until the caller removes it, so a crash at any point leaves every object readable (a
dependant is then either still based on the old object, which still exists, or already moved).

Finding dependants lists the deltaspace and reads the base name of every ``.delta`` record. It runs
for every bucket, whatever its current strategy, because a bucket switched back to ``reference``
may still hold chains. To keep a delete cheap, base names are remembered per deltaspace with each
object's listing signature (size, modification time, ETag): only objects whose signature changed
since the last scan (written by anyone, this process or another) are read again, so a delete costs
one listing plus a HEAD per changed delta.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

from deltaglider_proxy.engine.chains import Chains, Level, encode_waiting, join
from deltaglider_proxy.engine.eligibility import CompressionPolicies
from deltaglider_proxy.engine.keys import ObjectKey
from deltaglider_proxy.storage.base import Backend, CommonPrefix, StoredObject
from deltaglider_proxy.storage.metadata import DELTA_CMD_TEMPLATE, DELTA_SUFFIX, REFERENCE_NAME, FileMetadata

log = logging.getLogger(__name__)
HEAD_BATCH = 32
INDEX_DELTASPACES = 256
Signature = tuple[int, datetime, str | None]


def filename_of(level: Level) -> str:
    """The filename a delta's ``ref_path`` uses for ``level``."""
    if level.record is None:
        return REFERENCE_NAME
    return level.name.rsplit("/", 1)[-1][: -len(DELTA_SUFFIX)]


def delta_record(
    record: FileMetadata, filename: str, base: Level, delta_size: int, depth: int
) -> FileMetadata:
    """``record`` as a delta of ``filename`` against ``base`` at ``depth``; a delta against
    reference.bin is the upstream record exactly (no chain field), so the CLI reads it."""
    if base.record is None:
        return record.with_changes(
            note="delta",
            ref_path=REFERENCE_NAME,
            ref_sha256=base.sha256,
            delta_size=delta_size,
            delta_cmd=DELTA_CMD_TEMPLATE.format(name=filename),
            chain_depth=None,
        )
    base_name = filename_of(base)
    return record.with_changes(
        note="delta",
        ref_path=base_name,
        ref_sha256=base.sha256,
        delta_size=delta_size,
        delta_cmd=f"xdelta3 -e -9 -s {base_name} {filename} {filename}.delta",
        chain_depth=depth,
    )


def as_passthrough(record: FileMetadata) -> FileMetadata:
    return record.with_changes(
        note="passthrough", ref_path=None, ref_sha256=None, delta_size=None, delta_cmd=None, chain_depth=None
    )


async def deltas_in(backend: Backend, bucket: str, prefix: str) -> list[StoredObject]:
    """Every delta object of one deltaspace, records loaded."""
    scan = f"{prefix}/" if prefix else ""
    names: list[str] = []
    async for entry in backend.list(bucket, scan, delimiter="/"):
        if not isinstance(entry, CommonPrefix) and entry.name.endswith(DELTA_SUFFIX):
            names.append(entry.name)
    found: list[StoredObject] = []
    for start in range(0, len(names), HEAD_BATCH):
        heads = await asyncio.gather(*(backend.head(bucket, n) for n in names[start : start + HEAD_BATCH]))
        found.extend(h for h in heads if h is not None and h.record is not None and h.record.note == "delta")
    return found


class Dependants:
    def __init__(self, backend: Backend, chains: Chains, policies: CompressionPolicies) -> None:
        self.backend = backend
        self.chains = chains
        self.policies = policies
        # (bucket, prefix) -> delta object name -> (listing signature, base filename or None)
        self._index: OrderedDict[tuple[str, str], dict[str, tuple[Signature, str | None]]] = OrderedDict()

    async def base_names(self, bucket: str, prefix: str) -> dict[str, str]:
        """Delta object name -> the filename of its base, for every delta of the deltaspace."""
        known = self._index.get((bucket, prefix), {})
        fresh: dict[str, tuple[Signature, str | None]] = {}
        changed: list[tuple[str, Signature]] = []
        async for entry in self.backend.list(bucket, f"{prefix}/" if prefix else "", delimiter="/"):
            if isinstance(entry, CommonPrefix) or not entry.name.endswith(DELTA_SUFFIX):
                continue
            signature: Signature = (entry.size, entry.modified, entry.etag)
            cached = known.get(entry.name)
            if cached is not None and cached[0] == signature:
                fresh[entry.name] = cached
            else:
                changed.append((entry.name, signature))
        for start in range(0, len(changed), HEAD_BATCH):
            batch = changed[start : start + HEAD_BATCH]
            heads = await asyncio.gather(*(self.backend.head(bucket, name) for name, _ in batch))
            for (name, signature), head in zip(batch, heads, strict=True):
                if head is None:
                    continue  # deleted meanwhile
                record = head.record
                base = record.base_name if record is not None and record.note == "delta" else None
                # Kept with the listing's signature: if the object changed between the listing
                # and the HEAD, the next listing shows a new signature and it is read again.
                fresh[name] = (signature, base)
        self._index[(bucket, prefix)] = fresh
        self._index.move_to_end((bucket, prefix))
        while len(self._index) > INDEX_DELTASPACES:
            self._index.popitem(last=False)
        return {name: base for name, (_, base) in fresh.items() if base is not None}

    async def find(self, bucket: str, key: ObjectKey) -> list[StoredObject]:
        names = [
            name
            for name, base in (await self.base_names(bucket, key.prefix)).items()
            if base == key.filename and name != key.delta_name
        ]
        found: list[StoredObject] = []
        for name in names:
            stored = await self.backend.head(bucket, name)
            # Re-checked on the loaded record: the index only narrows the search.
            record = stored.record if stored is not None else None
            if stored is not None and record is not None and _based_on(record, key.filename):
                found.append(stored)
        return found

    async def release(self, bucket: str, key: ObjectKey) -> int:
        """Move every dependant of ``key``'s delta object onto that object's own base. Call under
        the deltaspace lock, before the object is deleted or replaced; returns how many moved."""
        stored = await self.backend.head(bucket, key.delta_name)
        if stored is None or stored.record is None or stored.record.note != "delta":
            return 0
        dependants = await self.find(bucket, key)
        if not dependants:
            return 0
        levels = await self.chains.bases(bucket, key.prefix, stored.record)
        for dependant in dependants:
            await self.rebase(bucket, key.prefix, dependant, levels)
        log.info("moved %d dependants of %s/%s onto its base", len(dependants), bucket, key.key)
        return len(dependants)

    async def rebase(self, bucket: str, prefix: str, dependant: StoredObject, levels: list[Level]) -> str:
        """Re-encode the delta object ``dependant`` against ``levels[0]`` (one atomic write), or
        store it whole when that delta saves too little. Returns the form it now has."""
        record = dependant.record
        assert record is not None
        base = levels[0]
        depth = (base.record.depth if base.record is not None else 0) + 1
        filename = dependant.name.rsplit("/", 1)[-1][: -len(DELTA_SUFFIX)]
        threshold = self.policies.for_bucket(bucket).max_delta_ratio
        spool = self.chains.spool
        delta_path = spool.new_path(".delta")
        copy = spool.new_path(".src")
        try:
            async with self.chains.object_content(bucket, prefix, dependant.name, record) as content:
                async with self.chains.content(bucket, prefix, levels) as base_path:
                    size = await encode_waiting(self.chains.codec, base_path, content, delta_path)
                if record.file_size and size / record.file_size < threshold:
                    new = delta_record(record, filename, base, size, depth)
                    await self.backend.write(bucket, dependant.name, delta_path, new, move=True)
                    return "delta"
                await asyncio.to_thread(shutil.copyfile, content, copy)
            # Whole: the passthrough copy first, then the delta (same created_at: a reader that
            # sees both takes the delta, still valid until its base goes).
            await self.backend.write(bucket, join(prefix, filename), copy, as_passthrough(record), move=True)
            await self.backend.delete(bucket, dependant.name)
            return "passthrough"
        finally:
            await asyncio.to_thread(_unlink, delta_path)
            await asyncio.to_thread(_unlink, copy)


def _based_on(record: FileMetadata, filename: str) -> bool:
    return record.note == "delta" and record.base_name == filename


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
