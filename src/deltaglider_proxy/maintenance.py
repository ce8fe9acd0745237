"""``deltaglider-proxy repack``: re-pack one prefix into a delta strategy, offline.

Runs against the configured backend directly (not through HTTP), with its own spool and cache
directories under the state dir so a proxy running beside it keeps its own. Object by object,
each step atomic; interrupted, it is simply run again (objects already in the target form are
skipped).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import cast

import click

from deltaglider_proxy.app import build_backend, state_dir
from deltaglider_proxy.config.load import ConfigError, load_snapshot
from deltaglider_proxy.config.model import MAX_CHAIN_DEPTH_CEILING
from deltaglider_proxy.engine.codec import Codec
from deltaglider_proxy.engine.eligibility import CompressionPolicies, Strategy
from deltaglider_proxy.engine.locks import DeltaspaceLocks
from deltaglider_proxy.engine.references import ReferenceCache
from deltaglider_proxy.engine.repack import Repacker
from deltaglider_proxy.engine.spool import Spool
from deltaglider_proxy.engine.store import DeltaStore
from deltaglider_proxy.storage.base import StorageError

CACHE_BYTES = 512 * 1024 * 1024


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@click.command("repack")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--bucket", required=True, help="Bucket to re-pack.")
@click.option("--prefix", default="", help="Deltaspace (key prefix without trailing '/'); default the root.")
@click.option("--strategy", type=click.Choice(["chain", "reference"]), required=True)
@click.option(
    "--max-chain-depth",
    type=click.IntRange(1, MAX_CHAIN_DEPTH_CEILING),
    default=None,
    help="Depth limit for --strategy chain (default: the bucket's max_chain_depth).",
)
@click.pass_context
def repack(
    ctx: click.Context,
    config_path: str | None,
    bucket: str,
    prefix: str,
    strategy: str,
    max_chain_depth: int | None,
) -> None:
    """Re-encode every object of one prefix into STRATEGY; prints stored bytes before/after."""
    config_path = config_path or (ctx.obj or {}).get("config_path")
    try:
        snapshot = load_snapshot(config_path, None)
    except ConfigError as exc:
        click.echo(f"deltaglider-proxy: {exc}", err=True)
        sys.exit(2)
    config = snapshot.config
    policies = CompressionPolicies(config.advanced.max_delta_ratio, config.storage.buckets)
    target = cast(Strategy, strategy)
    depth = max_chain_depth or policies.for_bucket(bucket).max_chain_depth
    work = state_dir(snapshot) / f"repack-{os.getpid()}"
    _remove_stale_work_dirs(state_dir(snapshot))

    async def main() -> None:
        backend = build_backend(snapshot)
        start = getattr(backend, "start", None)
        if start is not None:
            await start()
        spool = Spool(work / "spool", None)
        references = ReferenceCache(work / "references", CACHE_BYTES)
        await asyncio.to_thread(spool.start)
        await asyncio.to_thread(references.start)
        codec = Codec(
            concurrency=2,
            timeout_seconds=snapshot.runtime.codec_timeout_seconds,
            max_output_bytes=config.advanced.max_object_size,
        )
        store = DeltaStore(backend, spool, codec, references, policies, DeltaspaceLocks())
        repacker = Repacker(store)
        try:
            before = await repacker.footprint(bucket, prefix)
            items = await repacker.plan(bucket, prefix)
            counts: dict[str, int] = {}
            with click.progressbar(
                length=len(items), label=f"repack {bucket}/{prefix}", file=sys.stderr
            ) as bar:
                async for _, outcome in repacker.run(bucket, prefix, target, depth, items):
                    counts[outcome] = counts.get(outcome, 0) + 1
                    bar.update(1)
            after = await repacker.footprint(bucket, prefix)
        finally:
            await backend.close()
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do"
        click.echo(f"{before.objects} objects: {summary}")
        saved = 100.0 * (1 - after.stored_bytes / before.stored_bytes) if before.stored_bytes else 0.0
        click.echo(f"stored bytes before: {before.stored_bytes} ({_mb(before.stored_bytes)})")
        click.echo(
            f"stored bytes after:  {after.stored_bytes} ({_mb(after.stored_bytes)}), {saved:+.2f} % saved"
        )

    try:
        asyncio.run(main())
    except StorageError as exc:
        click.echo(f"deltaglider-proxy: storage backend: {exc}", err=True)
        sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_work_dirs(state: Path) -> None:
    """Spool and cache copies of repack runs that were killed (their process is gone)."""
    for leftover in state.glob("repack-*"):
        pid = leftover.name.removeprefix("repack-")
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(leftover, ignore_errors=True)
