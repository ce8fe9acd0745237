"""The audit ring and its sanitising (control-plane.md §10.1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deltaglider_proxy.observability.audit import AuditRing, ring_size_from_env, sanitise


def test_sanitise_escapes_line_breaks_and_separators() -> None:
    assert sanitise("a\nb\rc|d") == "a\\nb\\rc\\|d"


def test_ring_is_newest_first_bounded_and_clamped() -> None:
    ring = AuditRing(capacity=3)
    for n in range(5):
        ring.record("create_user", user="admin", target=f"u{n}")
    assert [e.target for e in ring.recent()] == ["u4", "u3", "u2"]
    assert [e.target for e in ring.recent(1)] == ["u4"]
    assert len(ring.recent(0)) == 1  # clamped up to 1
    assert ring.recorded == 5


def test_entry_fields_and_log_line(caplog: pytest.LogCaptureFixture) -> None:
    ring = AuditRing()
    with caplog.at_level(logging.INFO, logger="deltaglider_proxy.audit"):
        entry = ring.record("login_failed", target="bootstrap\n| action=forged", ua="x" * 300)
    assert entry.ip == "unknown" and entry.user == "" and len(entry.ua) == 256
    assert entry.timestamp.endswith("Z") and "." in entry.timestamp
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [entry.log_line()]
    assert "\n" not in lines[0] and "\\| action=forged" in lines[0]


def test_user_agent_truncation_keeps_utf8_valid() -> None:
    entry = AuditRing().record("x", ua="é" * 200)  # 400 bytes
    assert len(entry.ua.encode()) <= 256 and entry.ua == "é" * 128


def test_mirror_gets_one_json_line_per_entry(tmp_path: Path) -> None:
    mirror = tmp_path / "audit.jsonl"
    ring = AuditRing(mirror=mirror)
    ring.record("create_group", user="admin", target="ops")
    ring.record("delete_group", user="admin", target="g1")
    ring.close()  # the mirror is written by a thread; close() flushes it
    docs = [json.loads(line) for line in mirror.read_text().splitlines()]
    assert [d["action"] for d in docs] == ["create_group", "delete_group"]
    assert set(docs[0]) == {"timestamp", "action", "user", "target", "ip", "ua", "bucket", "path"}
    assert mirror.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("raw", "size"), [("", 500), ("abc", 500), ("0", 500), ("-3", 500), ("42", 42)])
def test_ring_size_from_env(raw: str, size: int) -> None:
    assert ring_size_from_env({"DGP_AUDIT_RING_SIZE": raw}) == size


def test_audit_fields_are_json_keys_but_not_repeated_in_text_lines(caplog: pytest.LogCaptureFixture) -> None:
    from deltaglider_proxy.observability.logs import JsonFormatter, KeyValueFormatter

    with caplog.at_level(logging.INFO, logger="deltaglider_proxy.audit"):
        AuditRing().record("s3_put", user="$bootstrap", bucket="b", path="k v")
    [record] = caplog.records
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["audit"], doc["action"], doc["user"], doc["bucket"], doc["path"]) == (
        True,
        "s3_put",
        "$bootstrap",
        "b",
        "k v",
    )
    text = KeyValueFormatter().format(record)
    assert 'msg="AUDIT | action=s3_put | user=$bootstrap' in text
    assert text.count("action=") == 1
