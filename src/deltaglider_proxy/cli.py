"""``deltaglider-proxy``: validate the configuration, prepare the data dir, serve.

Everything that can be wrong with the configuration or the data directory is reported here,
before the server starts, with the field or path and the reason.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from deltaglider_proxy import __version__
from deltaglider_proxy.app import build_backend, state_dir
from deltaglider_proxy.auth.credentials import resolve_credentials
from deltaglider_proxy.config.load import ConfigError, Snapshot, load_snapshot
from deltaglider_proxy.config.model import parse_listen_addr
from deltaglider_proxy.engine.codec import CodecFailed, check_available
from deltaglider_proxy.maintenance import repack
from deltaglider_proxy.observability.logs import parse_levels
from deltaglider_proxy.storage.base import StorageError


def _fail(message: str) -> None:
    click.echo(f"deltaglider-proxy: {message}", err=True)
    sys.exit(2)


def _prepare(snapshot: Snapshot) -> None:
    """Probe the backend (xattrs, permissions) and settle the credentials before serving."""
    try:
        parse_levels(snapshot.config.advanced.log_level)
    except ValueError as exc:
        _fail(f"advanced.log_level / DGP_LOG_LEVEL: {exc}")
    try:
        check_available()
    except CodecFailed as exc:
        _fail(f"delta codec: {exc}")
    backend = build_backend(snapshot)

    async def probe() -> None:
        start = getattr(backend, "start", None)
        if start is not None:
            await start()
        await backend.close()

    try:
        asyncio.run(probe())
    except StorageError as exc:
        _fail(f"storage backend: {exc}")
    except OSError as exc:
        _fail(f"storage backend: {exc.strerror}: {exc.filename}")
    access = snapshot.config.access
    try:
        credentials = resolve_credentials(
            access.access_key_id, access.secret_access_key, access.authentication, state_dir(snapshot)
        )
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if credentials.mode == "open":
        click.echo(
            "WARNING: authentication is disabled (authentication: none).\n"
            "WARNING: anyone who can reach this port can read, write and delete every object.",
            err=True,
        )
    elif credentials.generated and credentials.pair is not None:
        click.echo(
            "Generated S3 credentials (shown once; stored in "
            f"{credentials.stored_at}, mode 0600):\n"
            f"  AWS_ACCESS_KEY_ID={credentials.pair.access_key_id}\n"
            f"  AWS_SECRET_ACCESS_KEY={credentials.pair.secret_access_key}",
            err=True,
        )
    elif credentials.stored_at is not None and credentials.pair is not None:
        click.echo(
            f"Using S3 access key {credentials.pair.access_key_id} from {credentials.stored_at}", err=True
        )


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("-l", "--listen", help="Listen address HOST:PORT (default 0.0.0.0:9000).")
@click.version_option(__version__, "-V", "--version", prog_name="deltaglider-proxy")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, listen: str | None) -> None:
    """S3-compatible proxy that stores similar binaries as xdelta3 deltas (serves without a command)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config_path  # maintenance commands default to the same config
        return
    try:
        snapshot = load_snapshot(config_path, listen)
    except ConfigError as exc:
        _fail(str(exc))
        return
    _prepare(snapshot)
    host, port = parse_listen_addr(snapshot.config.advanced.listen_addr)
    # The server's worker rebuilds the snapshot from the environment: hand it the same inputs.
    if config_path:
        os.environ["DGP_CONFIG"] = str(Path(config_path).resolve())
    os.environ["DGP_LISTEN_ADDR"] = snapshot.config.advanced.listen_addr
    serve(host, port, snapshot)


def serve(host: str, port: int, snapshot: Snapshot) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    tls = snapshot.config.advanced.tls
    click.echo(
        f"deltaglider-proxy {__version__} listening on http{'s' if tls.enabled else ''}://{host}:{port}",
        err=True,
    )
    server = Granian(
        "deltaglider_proxy.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        log_access=False,
        log_enabled=True,
        ssl_cert=Path(tls.cert_path) if tls.enabled and tls.cert_path else None,
        ssl_key=Path(tls.key_path) if tls.enabled and tls.key_path else None,
    )
    server.serve()


main.add_command(repack)

if __name__ == "__main__":
    main()
