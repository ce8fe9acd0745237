"""The engine's counters and levels as one :class:`EngineReading`, taken at scrape time."""

from __future__ import annotations

from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.observability.metrics import CacheReading, EngineReading

# Background outcomes (engine/background.py) → the decision the object finally got. A deferred
# PUT is counted here, once its fate is known, not when it was first stored as-is; a superseded
# job's object was replaced or deleted and is counted through its successor.
_BACKGROUND_DECISIONS = {
    "delta": "delta",
    "dissimilar": "passthrough",
    "ratio": "passthrough",
    "compression-off": "passthrough",
    "no-reference": "passthrough",
    "failed": "passthrough",
}


def read_engine(engine: ObjectEngine) -> EngineReading:
    decisions = {"delta": 0, "passthrough": 0, "reference": 0}
    for (decision, reason), count in engine.decisions.items():
        if reason == "deferred":
            continue
        label = "reference" if reason == "reference" else decision
        decisions[label] = decisions.get(label, 0) + count
    background = engine.background
    if background is not None:
        for outcome, count in background.outcomes.items():
            final = _BACKGROUND_DECISIONS.get(outcome)
            if final is not None:
                decisions[final] += count
    cache = engine.references.stats()
    codec = engine.deltas.codec
    return EngineReading(
        cache=CacheReading(cache.hits, cache.misses, cache.size_bytes, cache.max_bytes, cache.entries),
        codec_available=max(codec.concurrency - codec.in_use, 0),
        decisions=decisions,
        bytes_saved=engine.deltas.bytes_saved,
        background_pending=background.pending if background is not None else 0,
    )
