"""The audit trail (control-plane.md §10.1): one INFO log line and one ring entry per event.

The ring is a convenience for the admin API (newest first, bounded); the durable trail is the log
stream, optionally mirrored as JSON lines to a file. Every field is sanitised the same way for the
log line, the ring and the mirror, so a hostile user name or User-Agent cannot forge a second line
or a fake ``| field=`` separator.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_RING_SIZE = 500
DEFAULT_READ_LIMIT = 100
MAX_READ_LIMIT = 500
MAX_USER_AGENT_BYTES = 256

log = logging.getLogger("deltaglider_proxy.audit")


def sanitise(value: str) -> str:
    return value.replace("\n", "\\n").replace("\r", "\\r").replace("|", "\\|")


def _truncate_utf8(value: str, limit: int) -> str:
    encoded = value.encode("utf-8")
    if len(encoded) <= limit:
        return value
    return encoded[:limit].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class AuditEntry:
    timestamp: str
    action: str
    user: str
    target: str
    ip: str
    ua: str
    bucket: str
    path: str

    def log_line(self) -> str:
        return (
            f"AUDIT | action={self.action} | user={self.user} | target={self.target} | ip={self.ip} "
            f"| ua={self.ua} | bucket={self.bucket} | path={self.path}"
        )


def mirror_path_from_env(environ: dict[str, str] | None = None) -> Path | None:
    """``DGP_AUDIT_LOG_PATH``: append every entry as one JSON line to this file (unset: no mirror)."""
    raw = (environ if environ is not None else dict(os.environ)).get("DGP_AUDIT_LOG_PATH", "").strip()
    return Path(raw) if raw else None


def check_mirror(mirror: Path | None) -> None:
    """ValueError naming the file when the mirror cannot be appended to: fail at start-up, not on
    every entry later."""
    if mirror is None:
        return
    try:
        os.close(os.open(mirror, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise ValueError(f"DGP_AUDIT_LOG_PATH: cannot append to {mirror}: {exc.strerror or exc}") from None


def ring_size_from_env(environ: dict[str, str] | None = None) -> int:
    """``DGP_AUDIT_RING_SIZE``; non-numeric or < 1 falls back to the default (§10.1)."""
    raw = (environ if environ is not None else dict(os.environ)).get("DGP_AUDIT_RING_SIZE", "")
    try:
        size = int(raw)
    except ValueError:
        return DEFAULT_RING_SIZE
    return size if size > 0 else DEFAULT_RING_SIZE


def new_entry(
    action: str,
    *,
    user: str = "",
    target: str = "",
    ip: str = "",
    ua: str = "",
    bucket: str = "",
    path: str = "",
) -> AuditEntry:
    """An entry stamped now, every field sanitised alike and the User-Agent cut at 256 bytes."""
    return AuditEntry(
        timestamp=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        action=sanitise(action),
        user=sanitise(user),
        target=sanitise(target),
        ip=sanitise(ip or "unknown"),
        ua=sanitise(_truncate_utf8(ua, MAX_USER_AGENT_BYTES)),
        bucket=sanitise(bucket),
        path=sanitise(path),
    )


def log_entry(entry: AuditEntry) -> None:
    """The entry's INFO line; also the whole of a log-only event (§10.2: SigV4 login failures)."""
    # Flat fields, so a JSON log carries the audit fields as keys (control-plane.md §10.3).
    log.info(entry.log_line(), extra={"audit": True, **asdict(entry)})


class AuditRing:
    """Process-wide, thread-safe ring of the most recent audit entries."""

    def __init__(self, capacity: int = DEFAULT_RING_SIZE, mirror: Path | None = None) -> None:
        self.capacity = capacity if capacity > 0 else DEFAULT_RING_SIZE
        self._entries: deque[AuditEntry] = deque(maxlen=self.capacity)
        self._lock = threading.Lock()
        self._mirror = mirror
        self.recorded = 0  # lifetime count, for metrics
        # Told the action of every entry (the audit-events counter).
        self.observer: Callable[[str], None] | None = None
        # The mirror is appended to by one writer thread, so recording (often on the event
        # loop) never waits on the disk; entries keep their order.
        self._lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if mirror is not None:
            check_mirror(mirror)
            self._writer = threading.Thread(target=self._write_mirror, name="audit-mirror", daemon=True)
            self._writer.start()

    def record(
        self,
        action: str,
        *,
        user: str = "",
        target: str = "",
        ip: str = "",
        ua: str = "",
        bucket: str = "",
        path: str = "",
    ) -> AuditEntry:
        entry = new_entry(action, user=user, target=target, ip=ip, ua=ua, bucket=bucket, path=path)
        with self._lock:
            self._entries.append(entry)
            self.recorded += 1
            if self._writer is not None:
                self._lines.put((json.dumps(asdict(entry), ensure_ascii=False) + "\n").encode("utf-8"))
        if self.observer is not None:
            self.observer(entry.action)
        log_entry(entry)
        return entry

    def _write_mirror(self) -> None:
        while (line := self._lines.get()) is not None:
            # One write() of one line with O_APPEND: other processes appending to the same file
            # (several instances on one host) never interleave inside a line.
            try:
                fd = os.open(self._mirror or "", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("audit mirror %s is not writable: %s", self._mirror, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Flush the mirror: lines recorded before this call are on disk when it returns."""
        if self._writer is not None:
            self._lines.put(None)
            self._writer.join(timeout)
            self._writer = None

    def recent(self, limit: int | None = DEFAULT_READ_LIMIT) -> list[AuditEntry]:
        """Newest first; ``limit`` clamped to 1…500, default 100 (§10.1)."""
        wanted = DEFAULT_READ_LIMIT if limit is None else max(1, min(MAX_READ_LIMIT, limit))
        with self._lock:
            entries = list(self._entries)
        return entries[::-1][:wanted]
