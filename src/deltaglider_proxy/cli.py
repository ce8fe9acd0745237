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
from deltaglider_proxy.cli_rotate import rotate_keys
from deltaglider_proxy.config.load import ConfigError, Snapshot, load_snapshot
from deltaglider_proxy.config.model import parse_listen_addr
from deltaglider_proxy.engine.codec import CodecFailed, check_available
from deltaglider_proxy.maintenance import repack
from deltaglider_proxy.observability.audit import check_mirror, mirror_path_from_env
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
        _fail(f"advanced.log_level / DGP_LOG_LEVEL / RUST_LOG: {exc}")
    try:
        check_mirror(mirror_path_from_env())
    except ValueError as exc:
        _fail(str(exc))
    try:
        check_available()
    except CodecFailed as exc:
        _fail(f"delta codec: {exc}")
    try:
        backend = build_backend(snapshot)
    except StorageError as exc:  # e.g. one key id naming two different keys
        _fail(f"storage backend: {exc}")
        return

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("-l", "--listen", help="Listen address HOST:PORT (default 0.0.0.0:9000).")
@click.option(
    "--set-bootstrap-password",
    "--set-admin-password",
    "set_password",
    is_flag=True,
    help="Read a new admin bootstrap password from stdin, store its hash, print it and exit.",
)
@click.version_option(__version__, "-V", "--version", prog_name="deltaglider-proxy")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, listen: str | None, set_password: bool) -> None:
    """S3-compatible proxy that stores similar binaries as xdelta3 deltas.

    Without a command the server starts.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config_path": config_path}
        return
    if set_password:
        _set_bootstrap_password(config_path)
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


def _set_bootstrap_password(config_path: str | None) -> None:
    """control-plane.md §2.2.5: the IAM database is untouched (its key is separate)."""
    from deltaglider_proxy.app import iam_db_path
    from deltaglider_proxy.auth.bootstrap import HASH_FILE
    from deltaglider_proxy.auth.passwords import hash_password, policy_error, to_base64
    from deltaglider_proxy.iam.sealed import write_atomically

    if config_path:
        os.environ["DGP_CONFIG"] = str(Path(config_path).resolve())
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        _fail('no password on stdin (pipe one line, e.g. `read -s P; echo "$P" | deltaglider-proxy ...`)')
    problem = policy_error(password)
    if problem is not None:
        _fail(problem)
    stored = hash_password(password)
    path = iam_db_path().parent / HASH_FILE
    try:
        write_atomically(path, (stored + "\n").encode())
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}")
    click.echo(f"Stored the new bootstrap password hash in {path} (mode 0600).", err=True)
    click.echo(f"DGP_BOOTSTRAP_PASSWORD_HASH={to_base64(stored)}")


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


main.add_command(rotate_keys)
main.add_command(repack)

if __name__ == "__main__":
    main()
