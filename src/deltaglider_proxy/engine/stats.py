"""Savings accounting: what a bucket's objects would weigh as plain files against what the backend
really holds, per bucket and per deltaspace, and how delta ratios are distributed.

One bulk walk of the bucket (bounded by ``limit`` objects, flagged ``truncated`` beyond it). The
admin API, ``GET /_/stats`` and the metrics exporter all read this one function.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from deltaglider_proxy.storage.base import Backend, CommonPrefix, StoredObject
from deltaglider_proxy.storage.metadata import DELTA_SUFFIX, REFERENCE_NAME

# Upper bounds of the delta-ratio histogram buckets (delta bytes / original bytes).
RATIO_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
DEFAULT_LIMIT = 100_000


@dataclass
class SpaceStats:
    """One deltaspace (key prefix)."""

    prefix: str
    objects: int = 0
    deltas: int = 0
    passthrough: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0  # objects as stored (delta sizes), references excluded
    reference_bytes: int = 0
    # Decode hops of the deltas (1 = against reference.bin; more under delta_strategy: chain).
    max_chain_depth: int = 0
    chain_depth_sum: int = 0

    @property
    def footprint_bytes(self) -> int:
        return self.stored_bytes + self.reference_bytes

    @property
    def mean_chain_depth(self) -> float:
        return round(self.chain_depth_sum / self.deltas, 2) if self.deltas else 0.0


@dataclass
class BucketStats:
    bucket: str
    objects: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0
    reference_bytes: int = 0
    truncated: bool = False
    spaces: dict[str, SpaceStats] = field(default_factory=dict)
    # Counts per RATIO_BOUNDS bucket (last slot: ratios above the final bound).
    ratio_histogram: list[int] = field(default_factory=lambda: [0] * (len(RATIO_BOUNDS) + 1))

    @property
    def footprint_bytes(self) -> int:
        return self.stored_bytes + self.reference_bytes

    @property
    def savings_percentage(self) -> float:
        """Saved share of the original bytes, counting references as stored bytes."""
        if self.original_bytes == 0:
            return 0.0
        return round(100.0 * (1 - self.footprint_bytes / self.original_bytes), 2)

    def as_dict(self, *, detail: bool = False) -> dict[str, object]:
        doc: dict[str, object] = {
            "bucket": self.bucket,
            "objects": self.objects,
            "original_bytes": self.original_bytes,
            "stored_bytes": self.stored_bytes,
            "reference_bytes": self.reference_bytes,
            "savings_percentage": self.savings_percentage,
            "truncated": self.truncated,
        }
        if detail:
            doc["ratio_histogram"] = {
                **{
                    f"le_{bound}": count
                    for bound, count in zip(RATIO_BOUNDS, self.ratio_histogram, strict=False)
                },
                "gt_1.0": self.ratio_histogram[-1],
            }
            doc["deltaspaces"] = [
                {
                    "prefix": space.prefix,
                    "objects": space.objects,
                    "deltas": space.deltas,
                    "passthrough": space.passthrough,
                    "original_bytes": space.original_bytes,
                    "stored_bytes": space.stored_bytes,
                    "reference_bytes": space.reference_bytes,
                    "footprint_bytes": space.footprint_bytes,
                    "max_chain_depth": space.max_chain_depth,
                    "mean_chain_depth": space.mean_chain_depth,
                }
                for space in sorted(self.spaces.values(), key=lambda s: s.prefix)
            ]
        return doc


def _space(stats: BucketStats, name: str) -> SpaceStats:
    prefix = name.rsplit("/", 1)[0] if "/" in name else ""
    space = stats.spaces.get(prefix)
    if space is None:
        space = stats.spaces[prefix] = SpaceStats(prefix)
    return space


async def bucket_stats(backend: Backend, bucket: str, limit: int = DEFAULT_LIMIT) -> BucketStats:
    stats = BucketStats(bucket)
    async for entry in backend.list(bucket):
        if isinstance(entry, CommonPrefix):
            continue
        if stats.objects >= limit:
            stats.truncated = True
            break
        loaded = entry if entry.record_loaded else await backend.head(bucket, entry.name)
        if loaded is None:
            continue  # deleted meanwhile
        _account(stats, loaded)
    return stats


def _account(stats: BucketStats, entry: StoredObject) -> None:
    space = _space(stats, entry.name)
    record = entry.record
    if entry.name.rsplit("/", 1)[-1] == REFERENCE_NAME and (record is None or record.note == "reference"):
        space.reference_bytes += entry.size
        stats.reference_bytes += entry.size
        return
    original = record.file_size if record is not None else entry.size
    stats.objects += 1
    space.objects += 1
    stats.original_bytes += original
    space.original_bytes += original
    stats.stored_bytes += entry.size
    space.stored_bytes += entry.size
    if record is not None and record.note == "delta" and entry.name.endswith(DELTA_SUFFIX):
        space.deltas += 1
        space.max_chain_depth = max(space.max_chain_depth, record.depth)
        space.chain_depth_sum += record.depth
        ratio = entry.size / original if original else 1.0
        stats.ratio_histogram[bisect_left(RATIO_BOUNDS, ratio)] += 1
    else:
        space.passthrough += 1
