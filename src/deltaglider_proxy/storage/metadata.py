"""The per-object DeltaGlider record (storage.md §1.4) and its two wire forms.

The record is what every backend persists beside the bytes of a stored object: as compact
JSON in the ``user.dg.metadata`` xattr on the filesystem (§1.5.1) and as ``x-amz-meta-dg-*``
user metadata on S3 (§1.5.2). It lives in the store layer because each backend must encode
it; the engine decides its contents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from typing import Any, Literal

from deltaglider_proxy import __version__

Note = Literal["reference", "delta", "passthrough"]

TOOL = f"deltaglider_proxy/{__version__}"
REFERENCE_NAME = "reference.bin"
REFERENCE_ORIGINAL_NAME = "__reference__"
DELTA_SUFFIX = ".delta"
DELTA_CMD_TEMPLATE = "xdelta3 -e -9 -s reference.bin {name} {name}.delta"
UNREADABLE_DEPTH = 2**31


class MetadataError(ValueError):
    """A stored record that cannot be parsed (a managed object whose metadata is corrupt)."""


@dataclass(frozen=True)
class FileMetadata:
    tool: str
    original_name: str
    file_sha256: str
    file_size: int
    md5: str
    created_at: datetime
    note: Note
    multipart_etag: str | None = None
    content_type: str | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)
    # Headers S3 lets clients store with an object besides Content-Type (Content-Encoding,
    # Content-Disposition, Cache-Control, Expires, Content-Language). Kept in user_metadata on
    # the wire under reserved ``dg-h-`` names so both serialisations stay schema-compatible.
    source_name: str | None = None  # reference only
    ref_path: str | None = None  # delta only
    ref_sha256: str | None = None
    delta_size: int | None = None
    delta_cmd: str | None = None
    # Our extension (issue 8, `chain` strategy): hops a GET decodes to rebuild this delta. Absent
    # (None) on a delta against reference.bin — depth 1, the layout the deltaglider CLI reads —
    # so reference-strategy records stay byte-for-byte as before. A chained delta names its base
    # object's filename in ref_path and the base's original SHA-256 in ref_sha256.
    chain_depth: int | None = None
    # Checksums the client asked S3 to keep (algorithm -> base64 value), e.g. {"CRC32": "..."}.
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        """The quoted ETag clients see: the multipart ETag verbatim, else the MD5."""
        if self.multipart_etag:
            bare = self.multipart_etag.strip('"')
            return f'"{bare}"'
        return f'"{self.md5}"'

    @property
    def depth(self) -> int:
        """Decode hops to rebuild the object: 0 for full objects, 1 for a delta against
        reference.bin, ``chain_depth`` for a delta against another delta."""
        if self.note != "delta":
            return 0
        return self.chain_depth if self.chain_depth is not None else 1

    @property
    def base_name(self) -> str:
        """The filename of a delta's base inside its deltaspace (``reference.bin`` or a user object)."""
        return self.ref_path or REFERENCE_NAME

    @property
    def stored_size(self) -> int:
        return self.delta_size if self.note == "delta" and self.delta_size is not None else self.file_size

    def with_changes(self, **changes: Any) -> FileMetadata:
        return replace(self, **changes)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _format_rfc3339(value: datetime) -> str:
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}Z"


def _parse_datetime(text: str) -> datetime:
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1]
    # Nanosecond precision (upstream) is more than datetime holds: keep microseconds.
    if "." in text:
        head, frac = text.split(".", 1)
        tz = ""
        for sign in ("+", "-"):
            if sign in frac:
                frac, tz = frac.split(sign, 1)
                tz = sign + tz
                break
        text = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# Reserved user-metadata names used for S3 headers that are not x-amz-meta-* but must round-trip.
_HEADER_FIELDS = (
    "content-encoding",
    "content-disposition",
    "cache-control",
    "expires",
    "content-language",
)
INTERNAL_HEADER_PREFIX = "dg-h-"
INTERNAL_CHECKSUM_PREFIX = "dg-checksum-"


def stored_headers(record: FileMetadata) -> dict[str, str]:
    """HTTP headers stored with the object (Content-Encoding, Cache-Control, ...)."""
    out: dict[str, str] = {}
    for name in _HEADER_FIELDS:
        value = record.user_metadata.get(INTERNAL_HEADER_PREFIX + name)
        if value is not None:
            out[name] = value
    return out


def client_metadata(record: FileMetadata) -> dict[str, str]:
    """The client's own x-amz-meta-* entries (internal dg-* markers removed)."""
    return {k: v for k, v in record.user_metadata.items() if not k.lower().startswith("dg-")}


# ---------------------------------------------------------------------------------------------
# Filesystem form: compact JSON in the user.dg.metadata xattr (§1.5.1)
# ---------------------------------------------------------------------------------------------


def to_xattr_json(record: FileMetadata) -> bytes:
    doc: dict[str, Any] = {
        "tool": record.tool,
        "original_name": record.original_name,
        "file_sha256": record.file_sha256,
        "file_size": record.file_size,
        "md5": record.md5,
    }
    if record.multipart_etag is not None:
        doc["multipart_etag"] = record.multipart_etag
    doc["created_at"] = _format_rfc3339(record.created_at)
    if record.content_type is not None:
        doc["content_type"] = record.content_type
    user = dict(record.user_metadata)
    for algorithm, value in record.checksums.items():
        user[INTERNAL_CHECKSUM_PREFIX + algorithm.lower()] = value
    if user:
        doc["user_metadata"] = user
    doc["note"] = record.note
    if record.note == "reference":
        doc["source_name"] = record.source_name or record.original_name
    elif record.note == "delta":
        doc["ref_path"] = record.ref_path or REFERENCE_NAME
        doc["ref_sha256"] = record.ref_sha256 or ""
        doc["delta_size"] = record.delta_size or 0
        doc["delta_cmd"] = record.delta_cmd or DELTA_CMD_TEMPLATE.format(name=record.original_name)
        if record.chain_depth is not None:
            doc["chain_depth"] = record.chain_depth
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _split_checksums(user: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    plain: dict[str, str] = {}
    checksums: dict[str, str] = {}
    for key, value in user.items():
        if key.lower().startswith(INTERNAL_CHECKSUM_PREFIX):
            checksums[key[len(INTERNAL_CHECKSUM_PREFIX) :].upper()] = value
        else:
            plain[key] = value
    return plain, checksums


def from_xattr_json(raw: bytes) -> FileMetadata:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TypeError("metadata is not an object")
        note = doc.get("note", "passthrough")
        if note == "direct":
            note = "passthrough"
        if note not in ("reference", "delta", "passthrough"):
            raise ValueError(f"unknown note {note!r}")
        user, checksums = _split_checksums(dict(doc.get("user_metadata") or {}))
        ref_path = doc.get("ref_path") or doc.get("ref_key")
        return FileMetadata(
            tool=str(doc["tool"]),
            original_name=str(doc["original_name"]),
            file_sha256=str(doc.get("file_sha256", "")),
            file_size=int(doc.get("file_size", 0)),
            md5=str(doc.get("md5", "")),
            created_at=_parse_datetime(doc["created_at"]) if doc.get("created_at") else utcnow(),
            note=note,
            multipart_etag=doc.get("multipart_etag"),
            content_type=doc.get("content_type"),
            user_metadata={str(k): str(v) for k, v in user.items()},
            source_name=doc.get("source_name"),
            ref_path=str(ref_path).rsplit("/", 1)[-1] if ref_path else None,
            ref_sha256=doc.get("ref_sha256"),
            delta_size=int(doc["delta_size"]) if doc.get("delta_size") is not None else None,
            delta_cmd=doc.get("delta_cmd"),
            chain_depth=int(doc["chain_depth"]) if doc.get("chain_depth") is not None else None,
            checksums=checksums,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"invalid user.dg.metadata record: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# S3 form: x-amz-meta-dg-* user metadata (§1.5.2); names here are without "x-amz-meta-"
# ---------------------------------------------------------------------------------------------

S3_METADATA_LIMIT = 2048


def to_s3_metadata(record: FileMetadata, *, prefix: str = "") -> dict[str, str]:
    """User metadata for the S3 backend. ``prefix`` is the object's deltaspace (for dg-ref-key)."""
    meta: dict[str, str] = {
        "dg-tool": record.tool,
        "dg-original-name": record.original_name,
        "dg-file-sha256": record.file_sha256,
        "dg-file-size": str(record.file_size),
        "dg-md5": record.md5,
        "dg-created-at": _format_rfc3339(record.created_at),
        "dg-note": record.note,
    }
    if record.note == "reference":
        meta["dg-source-name"] = record.source_name or record.original_name
    elif record.note == "delta":
        base = record.ref_path or REFERENCE_NAME
        meta["dg-ref-path"] = base
        # The base's full key: the reference's for the CLI, a user key for a chained delta.
        meta["dg-ref-key"] = f"{prefix}/{base}" if prefix else base
        meta["dg-ref-sha256"] = record.ref_sha256 or ""
        meta["dg-delta-size"] = str(record.delta_size or 0)
        meta["dg-delta-cmd"] = record.delta_cmd or DELTA_CMD_TEMPLATE.format(name=record.original_name)
        if record.chain_depth is not None:
            meta["dg-chain-depth"] = str(record.chain_depth)
    else:
        # The deltaglider CLI treats any object with dg-file-sha256 as a delta unless it says
        # dg-compression: none (its marker for direct uploads); without it, the CLI cannot
        # download our passthrough objects.
        meta["dg-compression"] = "none"
    if record.multipart_etag is not None:
        meta["dg-multipart-etag"] = record.multipart_etag
    if record.content_type is not None:
        meta["content-type"] = record.content_type
    for key, value in record.user_metadata.items():
        meta["user-" + key] = value
    for algorithm, value in record.checksums.items():
        meta["user-" + INTERNAL_CHECKSUM_PREFIX + algorithm.lower()] = value
    return meta


def _decode_value(value: str) -> str:
    # Non-ASCII values travel RFC 2047-encoded (=?UTF-8?B?...?=): SigV4 cannot sign raw UTF-8.
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def read_s3_metadata(raw: Mapping[str, str]) -> dict[str, str]:
    """User metadata as an S3 HEAD returns it → the names and values :func:`from_s3_metadata` expects."""
    return {key.lower(): _decode_value(value) for key, value in raw.items()}


def _first(meta: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = meta.get(name)
        if value:
            return value
    return None


def from_s3_metadata(meta: Mapping[str, str]) -> FileMetadata | None:
    """Parse user metadata (lower-case names, no x-amz-meta- prefix). None = unmanaged."""
    tool = _first(meta, "dg-tool", "tool")
    name = _first(meta, "dg-original-name", "original-name", "original_name", "dg-source-name", "source-name")
    sha = _first(meta, "dg-file-sha256", "file-sha256", "file_sha256")
    if not tool or not name or not sha:
        return None
    size_text = _first(meta, "dg-file-size", "file-size", "file_size") or "0"
    if not size_text.isdigit():
        return None
    created_text = _first(meta, "dg-created-at", "created-at", "created_at")
    try:
        created = _parse_datetime(created_text) if created_text else utcnow()
    except ValueError:
        created = utcnow()
    raw_note = _first(meta, "dg-note", "note") or ""
    ref_path = _first(meta, "dg-ref-path", "dg-ref-key", "ref-path", "ref-key")
    note: Note
    if raw_note == "reference":
        note = "reference"
    elif ref_path or raw_note == "delta" or raw_note.startswith("zero-diff"):
        note = "delta"
    else:
        note = "passthrough"
    ref_sha = _first(meta, "dg-ref-sha256", "ref-sha256")
    if note == "delta" and not ref_sha:
        return None
    user = {k[len("user-") :]: v for k, v in meta.items() if k.startswith("user-")}
    user, checksums = _split_checksums(user)
    delta_size_text = _first(meta, "dg-delta-size", "delta-size") or "0"
    depth_text = meta.get("dg-chain-depth", "")
    if depth_text and not depth_text.isdigit():
        # Refused by every reader (deeper than any chain may be), never served as raw VCDIFF.
        depth_text = str(UNREADABLE_DEPTH)
    return FileMetadata(
        tool=tool,
        original_name=name if note != "reference" else (_first(meta, "dg-original-name") or name),
        file_sha256=sha,
        file_size=int(size_text),
        md5=meta.get("dg-md5", ""),
        created_at=created,
        note=note,
        multipart_etag=meta.get("dg-multipart-etag"),
        content_type=meta.get("content-type"),
        user_metadata=user,
        source_name=_first(meta, "dg-source-name", "source-name", "source_name")
        if note == "reference"
        else None,
        ref_path=ref_path.rsplit("/", 1)[-1] if ref_path else (REFERENCE_NAME if note == "delta" else None),
        ref_sha256=ref_sha,
        # Only deltas carry a delta size; None otherwise, as the xattr form reads back.
        delta_size=(int(delta_size_text) if delta_size_text.isdigit() else 0) if note == "delta" else None,
        delta_cmd=_first(meta, "dg-delta-cmd", "delta-cmd"),
        chain_depth=int(depth_text) if depth_text and note == "delta" else None,
        checksums=checksums,
    )
