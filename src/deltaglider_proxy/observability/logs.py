"""Structured logs: one formatter for the whole process, request ids carried in a context var."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

# Libraries whose DEBUG output carries whole requests (botocore logs signed S3 requests with their
# Authorization header): a bare level takes them down to INFO at most; name them to go lower.
_CHATTY_LIBRARIES = ("botocore", "aiobotocore", "urllib3", "s3transfer")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id_var.get(),
            "msg": record.getMessage(),
        }
        doc.update(_extra(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… logger=… request_id=… msg="…" key=value…`` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id_var.get(),
            "msg": record.getMessage(),
        }
        if not getattr(record, "audit", False):
            # An audit record's message already spells out its fields (AUDIT | action=… | …).
            fields.update(_extra(record))
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def parse_levels(spec: str) -> tuple[int, dict[str, int]]:
    """``info`` or ``warn,deltaglider_proxy.s3api=debug`` → (default level, per-logger levels).

    Upstream's Rust-style filters (``deltaglider_proxy=debug,tower_http=debug``) are accepted.
    """
    default = logging.INFO
    per_module: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, level_text = part.rpartition("=")
        level = logging.getLevelName(
            level_text.strip().upper().replace("WARNING", "WARN").replace("WARN", "WARNING")
        )
        if level_text.strip().lower() == "trace":
            level = logging.DEBUG
        elif level_text.strip().lower() == "off":
            level = logging.CRITICAL + 10
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level_text!r} in {spec!r}")
        if sep:
            per_module[name.strip().replace("::", ".")] = level
        else:
            default = level
    return default, per_module


def configure(level_spec: str, fmt: str) -> None:
    default, per_module = parse_levels(level_spec)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(default)
    for name, level in per_module.items():
        logging.getLogger(name).setLevel(level)
    for name in _CHATTY_LIBRARIES:
        if name not in per_module:
            logging.getLogger(name).setLevel(max(default, logging.INFO))
