"""``deltaglider-proxy rotate-keys``: re-encrypt stored objects under each backend's active key.

It reads the same configuration as the server (file + env), so the new key is configured as
``key``/``key_id`` and the old ones stay readable as ``previous_keys`` (or ``legacy_key``).
Safe to interrupt and run again: objects already under the active key are skipped.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import click

from deltaglider_proxy.app import build_backend
from deltaglider_proxy.config.load import ConfigError, load_snapshot
from deltaglider_proxy.storage.base import Backend, StorageError
from deltaglider_proxy.storage.encrypted import EncryptedBackend
from deltaglider_proxy.storage.rotation import (
    RotationReport,
    RotationUnavailable,
    rotate_bucket,
    stored_names,
)
from deltaglider_proxy.storage.router import BackendRouter


@dataclass(frozen=True)
class Target:
    backend: EncryptedBackend
    bucket: str  # the real bucket name on that backend


def _wrappers(storage: Backend) -> dict[str, EncryptedBackend]:
    if isinstance(storage, BackendRouter):
        return {name: b for name, b in storage.backends.items() if isinstance(b, EncryptedBackend)}
    assert isinstance(storage, EncryptedBackend)
    return {storage.name: storage}


async def _targets(storage: Backend, buckets: tuple[str, ...], only: str | None) -> list[Target]:
    wrappers = _wrappers(storage)
    if only is not None and only not in wrappers:
        raise click.UsageError(f"--backend {only!r} is not one of {', '.join(sorted(wrappers))}")
    if buckets:
        found = []
        for bucket in buckets:
            if isinstance(storage, BackendRouter):
                backend, real = storage.resolve(bucket.lower())
                assert isinstance(backend, EncryptedBackend)
            else:
                backend, real = wrappers[next(iter(wrappers))], bucket
            if only is None or backend.name == only:
                found.append(Target(backend, real))
        return found
    if not any(b.policy.write_key for n, b in wrappers.items() if only is None or n == only):
        raise RotationUnavailable("no backend has an active key (mode aes256-gcm-proxy with a key)")
    targets: list[Target] = []
    for name, backend in sorted(wrappers.items()):
        if (only is None or name == only) and backend.policy.write_key is not None:
            targets.extend(Target(backend, info.name) for info in await backend.list_buckets())
    return targets


async def _rotate(
    config_path: str | None,
    buckets: tuple[str, ...],
    only: str | None,
    include_plaintext: bool,
    dry_run: bool,
) -> int:
    try:
        snapshot = load_snapshot(config_path)
    except ConfigError as exc:
        click.echo(f"deltaglider-proxy: {exc}", err=True)
        return 2
    try:
        storage = build_backend(snapshot)
    except StorageError as exc:
        click.echo(f"deltaglider-proxy: storage backend: {exc}", err=True)
        return 2
    failed = 0
    try:
        await getattr(storage, "start")()  # noqa: B009 - every built storage has start()
        for target in await _targets(storage, buckets, only):
            backend, bucket = target.backend, target.bucket
            write_key = backend.policy.write_key
            if write_key is None:
                raise RotationUnavailable(
                    f"backend {backend.name!r} (bucket {bucket!r}) has no active key: rotation needs "
                    "mode aes256-gcm-proxy with a key"
                )
            names = await stored_names(backend, bucket)
            label = f"{backend.name}/{bucket}"
            with click.progressbar(length=len(names), label=label, file=sys.stderr, show_pos=True) as bar:
                report: RotationReport = await rotate_bucket(
                    backend,
                    bucket,
                    names,
                    include_plaintext=include_plaintext,
                    dry_run=dry_run,
                    progress=lambda _name, _outcome: bar.update(1),
                )
            summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(report.counts.items()))
            verb = "would rotate" if dry_run else "rotated"
            click.echo(f"{label}: {summary or 'empty'} ({verb} to key id {write_key[1]})")
            for name, reason in report.failures:
                click.echo(f"  failed: {name}: {reason}", err=True)
            failed += len(report.failures)
    except RotationUnavailable as exc:
        click.echo(f"deltaglider-proxy: {exc}", err=True)
        return 2
    except StorageError as exc:
        click.echo(f"deltaglider-proxy: storage backend: {exc}", err=True)
        return 2
    finally:
        await storage.close()
    return 1 if failed else 0


@click.command("rotate-keys")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("-b", "--bucket", "buckets", multiple=True, help="Only this bucket (repeatable).")
@click.option("--backend", "only", help="Only buckets of this named backend.")
@click.option("--include-plaintext", is_flag=True, help="Also encrypt objects stored as plaintext.")
@click.option("--dry-run", is_flag=True, help="Count what would be rotated; write nothing.")
@click.pass_context
def rotate_keys(
    ctx: click.Context,
    config_path: str | None,
    buckets: tuple[str, ...],
    only: str | None,
    include_plaintext: bool,
    dry_run: bool,
) -> None:
    """Re-encrypt stored objects under the active key, in place, one atomic write per object.

    Objects already under the active key id are skipped, so an interrupted run can simply be
    started again. Exit status 1 when some objects failed (listed on stderr).
    """
    config_path = config_path or (ctx.obj or {}).get("config_path")
    sys.exit(asyncio.run(_rotate(config_path, buckets, only, include_plaintext, dry_run)))
