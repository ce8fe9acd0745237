"""Drive the proxy with real command-line S3 clients (aws CLI, rclone, s3cmd) as subprocesses.

Every client is configured only through a private environment and temp files, so nothing from the
developer's own ~/.aws, ~/.config/rclone or ~/.s3cfg (nor inherited AWS_* variables) leaks in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.server import ACCESS_KEY, SECRET_KEY, ProxyServer

AWS_BIN = Path(sys.executable).parent / "aws"
REGION = "us-east-1"
RCLONE_REMOTE = "dg"
MIB = 1024 * 1024

Result = subprocess.CompletedProcess[str]


def clean_env(home: Path) -> dict[str, str]:
    """The parent environment minus anything that could configure a client behind our back."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "S3CMD", "BOTO_", "DGP_"))
    }
    env.update({"HOME": str(home), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})
    return env


def run(
    cmd: Sequence[str], env: Mapping[str, str], *, timeout: float = 240, cwd: Path | None = None
) -> Result:
    return subprocess.run(
        list(cmd),
        env=dict(env),
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def check(result: Result) -> Result:
    """Fail with the client's own words when it exits non-zero."""
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, result.args))!r} exited {result.returncode}\n"
            f"--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}"
        )
    return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """Relative POSIX path → SHA-256 of every regular file below ``root``."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            chunk = min(remaining, 4 * MIB)
            handle.write(os.urandom(chunk))
            remaining -= chunk
    return path


class AwsCli:
    """``aws`` (CLI v1, from the venv) configured purely through environment variables."""

    def __init__(self, proxy: ProxyServer, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "aws-config"
        config.write_text("[default]\ns3 =\n    addressing_style = path\n")
        self.endpoint = proxy.endpoint
        self.env = clean_env(workdir)
        self.env.update(
            {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": str(config),
                "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-such-credentials"),
                "AWS_MAX_ATTEMPTS": "1",
                "AWS_PAGER": "",
            }
        )

    def raw(self, *args: str, timeout: float = 240) -> Result:
        return run([str(AWS_BIN), "--endpoint-url", self.endpoint, *args], self.env, timeout=timeout)

    def __call__(self, *args: str, timeout: float = 240) -> Result:
        return check(self.raw(*args, timeout=timeout))

    def api(self, operation: str, *args: str) -> Any:
        out = self("s3api", operation, "--output", "json", *args).stdout
        return json.loads(out) if out.strip() else {}


class Rclone:
    """``rclone`` with an on-the-fly remote named ``dg:`` defined only by RCLONE_CONFIG_DG_* vars."""

    def __init__(self, proxy: ProxyServer, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "rclone.conf"
        config.write_text("")
        prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
        self.env = clean_env(workdir)
        self.env.update(
            {
                "RCLONE_CONFIG": str(config),
                f"{prefix}TYPE": "s3",
                f"{prefix}PROVIDER": "Other",
                f"{prefix}ACCESS_KEY_ID": ACCESS_KEY,
                f"{prefix}SECRET_ACCESS_KEY": SECRET_KEY,
                f"{prefix}ENDPOINT": proxy.endpoint,
                f"{prefix}REGION": REGION,
                f"{prefix}FORCE_PATH_STYLE": "true",
                "RCLONE_CACHE_DIR": str(workdir / "cache"),
            }
        )
        self.binary = shutil.which("rclone") or "rclone"

    def raw(self, *args: str, timeout: float = 240) -> Result:
        # Fail fast and loudly: a retried request would hide a server error.
        flags = ["--retries", "1", "--low-level-retries", "1", "--contimeout", "10s"]
        return run([self.binary, *flags, *args], self.env, timeout=timeout)

    def __call__(self, *args: str, timeout: float = 240) -> Result:
        return check(self.raw(*args, timeout=timeout))


class S3cmd:
    """``s3cmd`` with a private config file, path-style, SigV4, plain HTTP."""

    def __init__(self, proxy: ProxyServer, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "s3cfg"
        host = f"127.0.0.1:{proxy.port}"
        self.config.write_text(
            "[default]\n"
            f"access_key = {ACCESS_KEY}\n"
            f"secret_key = {SECRET_KEY}\n"
            f"host_base = {host}\n"
            f"host_bucket = {host}\n"
            "use_https = False\n"
            "signature_v2 = False\n"
            f"bucket_location = {REGION}\n"
            "check_ssl_certificate = False\n"
            "progress_meter = False\n"
            "max_retries = 1\n"
        )
        self.env = clean_env(workdir)
        self.binary = shutil.which("s3cmd") or "s3cmd"

    def raw(self, *args: str, timeout: float = 240) -> Result:
        return run([self.binary, "-c", str(self.config), *args], self.env, timeout=timeout)

    def __call__(self, *args: str, timeout: float = 240) -> Result:
        return check(self.raw(*args, timeout=timeout))
