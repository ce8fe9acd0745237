"""Where the bootstrap password hash comes from and how it is rotated (control-plane.md §2.2).

Resolution, first hit wins: ``DGP_BOOTSTRAP_PASSWORD`` (plaintext for automation, hashed at
start and never logged) → ``DGP_BOOTSTRAP_PASSWORD_HASH`` / ``DGP_ADMIN_PASSWORD_HASH`` →
``advanced.bootstrap_password_hash`` → the state file ``.deltaglider_bootstrap_hash`` →
generated. The hash is only a login credential here: the IAM database has its own key.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deltaglider_proxy.auth.passwords import (
    decode_configured_hash,
    generate_password,
    hash_password,
    to_base64,
    verify_password,
)
from deltaglider_proxy.iam.sealed import write_atomically

log = logging.getLogger(__name__)
HASH_FILE = ".deltaglider_bootstrap_hash"
LEGACY_HASH_FILE = ".deltaglider_admin_hash"
PASSWORD_FILE = ".deltaglider_bootstrap_password"
Source = Literal["env_plaintext", "env", "config", "state_file", "generated"]
# argon2 verification takes 64 MiB for a moment; a flood of logins must not multiply that.
_VERIFY_SLOTS = threading.BoundedSemaphore(2)


@dataclass
class BootstrapPassword:
    hash: str
    source: Source
    state_dir: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def verify(self, password: str) -> bool:
        """Blocking (run it in a thread); at most two verifications run at once per process."""
        with _VERIFY_SLOTS:
            return verify_password(self.hash, password)

    def rotate(self, new_password: str) -> list[str]:
        """Store a new hash in the state file and use it; returns warnings for the operator."""
        new_hash = hash_password(new_password)
        with self._lock:
            write_atomically(self.state_dir / HASH_FILE, (new_hash + "\n").encode())
            self.hash = new_hash
            old_source, self.source = self.source, "state_file"
        (self.state_dir / PASSWORD_FILE).unlink(missing_ok=True)
        warnings: list[str] = []
        if old_source in ("env", "env_plaintext"):
            warnings.append(
                "the password was set by DGP_BOOTSTRAP_PASSWORD(_HASH), which wins at the next start: update "
                f"it, e.g. DGP_BOOTSTRAP_PASSWORD_HASH={to_base64(new_hash)}"
            )
        elif old_source == "config":
            warnings.append(
                "advanced.bootstrap_password_hash in the config file wins at the next start: set it to "
                f"{to_base64(new_hash)} (or remove it to use {HASH_FILE})"
            )
        return warnings


def resolve_bootstrap(
    env: Mapping[str, str], configured_hash: str | None, state_dir: Path
) -> BootstrapPassword:
    plaintext = env.get("DGP_BOOTSTRAP_PASSWORD")
    if plaintext:
        return BootstrapPassword(hash_password(plaintext), "env_plaintext", state_dir)
    for name in ("DGP_BOOTSTRAP_PASSWORD_HASH", "DGP_ADMIN_PASSWORD_HASH"):
        if env.get(name):
            return BootstrapPassword(_checked(decode_configured_hash(env[name]), name), "env", state_dir)
    if configured_hash:
        value = _checked(decode_configured_hash(configured_hash), "advanced.bootstrap_password_hash")
        return BootstrapPassword(value, "config", state_dir)
    for name in (HASH_FILE, LEGACY_HASH_FILE):
        path = state_dir / name
        if path.is_file():
            return BootstrapPassword(_checked(path.read_text().strip(), str(path)), "state_file", state_dir)
    return _generate(state_dir)


def _checked(value: str, source: str) -> str:
    if not value.startswith(("$argon2", "$2")):
        log.warning("%s is not an argon2 or bcrypt hash (nor base64 of one): admin login will fail", source)
    return value


def _generate(state_dir: Path) -> BootstrapPassword:
    password = generate_password()
    stored = hash_password(password)
    try:
        write_atomically(state_dir / HASH_FILE, (stored + "\n").encode())
    except OSError as exc:
        # S3 service must not depend on a writable working directory; only admin login is lost.
        log.error(
            "cannot store a generated bootstrap password in %s (%s): admin login is disabled until "
            "DGP_BOOTSTRAP_PASSWORD or DGP_BOOTSTRAP_PASSWORD_HASH is set",
            state_dir,
            exc,
        )
        return BootstrapPassword(
            hash_password(generate_password() + generate_password()), "generated", state_dir
        )
    if sys.stderr.isatty():
        print(
            "\n" + "=" * 72 + f"\n  Admin bootstrap password (shown once): {password}\n"
            f"  Its hash is in {state_dir / HASH_FILE}; for automation set\n"
            f"  DGP_BOOTSTRAP_PASSWORD_HASH={to_base64(stored)}\n" + "=" * 72 + "\n",
            file=sys.stderr,
        )
    else:
        # No terminal to show it on (containers, CI): keep it retrievable once, never in a log.
        path = state_dir / PASSWORD_FILE
        write_atomically(path, (password + "\n").encode())
        os.chmod(path, 0o600)
        log.warning(
            "generated an admin bootstrap password; read it from %s (deleted after the first password "
            "change). DGP_BOOTSTRAP_PASSWORD_HASH=%s",
            path,
            to_base64(stored),
        )
    return BootstrapPassword(stored, "generated", state_dir)
