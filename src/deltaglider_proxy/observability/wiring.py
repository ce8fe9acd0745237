"""Connect the metrics registry to the parts it reads: codec, engine, audit ring, backends.

Kept out of ``app.py`` so the application only says "observe this runtime"; everything the
exporter needs to know about the engine's internals is here and in ``engine_reading``.
"""

from __future__ import annotations

from collections.abc import Callable

from deltaglider_proxy import __version__
from deltaglider_proxy.config.model import StorageConfig
from deltaglider_proxy.engine.objects import ObjectEngine
from deltaglider_proxy.observability.audit import AuditRing
from deltaglider_proxy.observability.engine_reading import read_engine
from deltaglider_proxy.observability.metrics import Metrics

StorageTypeOf = Callable[[str | None], str]


def storage_types(storage: StorageConfig) -> StorageTypeOf:
    """bucket → ``filesystem`` | ``s3``: the type of the backend the bucket is routed to."""
    if not storage.backends:
        only = storage.singleton_backend().type
        return lambda bucket: only
    types = {entry.name: entry.type for entry in storage.backends}
    default = storage.default_backend or storage.backends[0].name
    routed = {name.lower(): p.backend for name, p in storage.buckets.items() if p.backend is not None}

    def type_of(bucket: str | None) -> str:
        return types[routed.get(bucket.lower(), default) if bucket else default]

    return type_of


def new_metrics(storage: StorageConfig) -> Metrics:
    # deltaglider_build_info's backend_type is the singleton's (or the default backend's) type.
    return Metrics(version=__version__, backend_type=storage_types(storage)(None))


def observe(metrics: Metrics, engine: ObjectEngine, audit: AuditRing) -> None:
    engine.deltas.codec.observer = metrics.observe_codec
    metrics.engine_reader = lambda: read_engine(engine)
    audit.observer = metrics.audit_recorded
