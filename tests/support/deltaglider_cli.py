"""The original Python ``deltaglider`` CLI (PyPI ``deltaglider==6.2.0``), for interoperability tests.

It lives in its own virtualenv (never in the project venv: its pins would clash with ours), built
from PyPI the first time a test asks for it and reused afterwards. The default location is
``<repo>/.venv-deltaglider`` (git-ignored); ``DELTAGLIDER_CLI_VENV`` overrides it. A file lock
makes concurrent pytest-xdist workers build it only once.

Facts about 6.2.0 this helper relies on (read from its source, checked against moto):

* Endpoint: ``--endpoint-url`` on ``cp``/``ls`` (its S3 adapter also honours ``AWS_ENDPOINT_URL``);
  credentials and region come from the ordinary boto3 chain (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``). It shells out to the ``xdelta3`` binary.
* ``cp LOCAL s3://bucket/prefix/`` is broken in 6.2.0: the trailing slash is stripped, ``prefix``
  is taken as the object key and the file lands in the *parent* deltaspace under its local name.
  The stored name is always the local file's name, never the key's last segment. So uploads must
  name the full key and the local file must carry the same name; :meth:`DeltagliderCli.upload`
  enforces that (copying the file under the right name when needed).
* ``ls`` hides ``reference.bin`` and strips ``.delta`` but prints *stored* sizes (delta sizes).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.clients import Result, check, clean_env, run

DELTAGLIDER_VERSION = "6.2.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-deltaglider"
_COMPLETE_MARKER = ".deltaglider-complete"


class DeltagliderCliError(AssertionError):
    """The CLI exited non-zero; the message carries its stderr and stdout."""


def cli_venv_dir() -> Path:
    override = os.environ.get("DELTAGLIDER_CLI_VENV")
    return Path(override) if override else DEFAULT_VENV


def _executable(venv: Path) -> Path:
    return venv / "bin" / "deltaglider"


def _is_ready(venv: Path) -> bool:
    marker = venv / _COMPLETE_MARKER
    return (
        marker.is_file() and marker.read_text().strip() == DELTAGLIDER_VERSION and _executable(venv).is_file()
    )


def ensure_deltaglider_cli(venv: Path | None = None, *, timeout: float = 900) -> Path:
    """Path of the ``deltaglider`` executable, building its venv from PyPI if it is not there yet."""
    venv = venv or cli_venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _is_ready(venv):
                _build(venv, timeout)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _executable(venv)


def _build(venv: Path, timeout: float) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            f"deltaglider=={DELTAGLIDER_VERSION}",
        ],
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    for cmd in steps:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"building the deltaglider CLI venv failed: {' '.join(cmd)!r} exited {result.returncode}\n"
                f"--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout}"
            )
    version = subprocess.run(
        [str(_executable(venv)), "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if version.stdout.strip() != f"deltaglider {DELTAGLIDER_VERSION}":
        raise RuntimeError(f"unexpected deltaglider CLI version: {version.stdout!r} {version.stderr!r}")
    (venv / _COMPLETE_MARKER).write_text(DELTAGLIDER_VERSION + "\n")


@dataclass(frozen=True)
class LsEntry:
    """One line of ``deltaglider ls``: an object (name relative to the listed prefix, stored size)
    or a common prefix (``is_prefix``, size ``None``)."""

    name: str
    size: int | None
    is_prefix: bool = False


@dataclass
class DeltagliderCli:
    """The CLI pointed at one S3 endpoint with static credentials; every command runs in a clean
    environment (nothing from ~/.aws or inherited AWS_*/DG_* variables)."""

    executable: Path
    endpoint: str
    access_key: str
    secret_key: str
    workdir: Path
    region: str = "us-east-1"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in clean_env(self.workdir).items() if not k.startswith("DG_")}
        env.update(
            {
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_CONFIG_FILE": str(self.workdir / "no-such-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-such-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
                "DG_SUPPRESS_DEPRECATION": "1",
                "DG_METRICS": "noop",
                "DG_LOG_LEVEL": "WARNING",
            }
        )
        env.update(self.extra_env)
        return env

    def raw(self, *args: str, timeout: float = 180) -> Result:
        """Run ``deltaglider <args>``; never raises on a non-zero exit."""
        return run([str(self.executable), *args], self.env, timeout=timeout, cwd=self.workdir)

    def __call__(self, *args: str, timeout: float = 180) -> Result:
        """Run ``deltaglider <args>``; raise :class:`DeltagliderCliError` (with stderr) on failure."""
        try:
            return check(self.raw(*args, timeout=timeout))
        except AssertionError as exc:
            raise DeltagliderCliError(str(exc)) from None

    def _endpoint_args(self) -> list[str]:
        return ["--endpoint-url", self.endpoint, "--region", self.region]

    def version(self) -> str:
        return self("--version").stdout.strip()

    def upload(self, local: Path, bucket: str, key: str, *, no_delta: bool = False) -> Result:
        """``deltaglider cp local s3://bucket/key`` (full key, see the module docstring)."""
        if not key or key.endswith("/"):
            raise ValueError(
                f"give the full object key, not a prefix ({key!r}): deltaglider 6.2.0 mis-parses it"
            )
        filename = key.rsplit("/", 1)[-1]
        source = local
        if local.name != filename:
            staging = Path(tempfile.mkdtemp(prefix="upload-", dir=self.workdir))
            source = staging / filename
            shutil.copyfile(local, source)
        args = ["cp", str(source), f"s3://{bucket}/{key}", *self._endpoint_args()]
        if no_delta:
            args.append("--no-delta")
        return self(*args)

    def download(self, bucket: str, key: str, dest: Path) -> Result:
        """``deltaglider cp s3://bucket/key dest`` (finds ``key.delta`` by itself, verifies SHA-256)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        return self("cp", f"s3://{bucket}/{key}", str(dest), *self._endpoint_args())

    def ls(self, bucket: str, prefix: str = "", *, recursive: bool = False) -> list[LsEntry]:
        """``deltaglider ls s3://bucket/prefix`` parsed; names are relative to ``prefix``."""
        args = ["ls", f"s3://{bucket}/{prefix}", *self._endpoint_args()]
        if recursive:
            args.append("--recursive")
        return parse_ls(self(*args).stdout)


def parse_ls(stdout: str) -> list[LsEntry]:
    entries: list[LsEntry] = []
    for line in stdout.splitlines():
        fields = line.split(maxsplit=3)
        if not fields:
            continue
        if fields[0] == "PRE" and len(fields) == 2:
            entries.append(LsEntry(name=fields[1], size=None, is_prefix=True))
        elif len(fields) == 4 and fields[2].isdigit():
            entries.append(LsEntry(name=fields[3], size=int(fields[2])))
        else:
            raise ValueError(f"unexpected `deltaglider ls` line: {line!r}")
    return entries
