"""Multipart uploads: parts live as files in the local state dir until Complete.

Unlike upstream (parts in RAM, lost on restart) an upload's parts and manifest are files, so
memory stays bounded whatever the upload size and uploads survive a restart. Complete streams
the listed parts into one spooled file (hashing on the way) and stores it through the engine
like a single PUT, with the multipart ETag attached — or, for an upload started in layout mode,
writes it verbatim as a stored object with the DeltaGlider record given at Create.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltaglider_proxy.engine.keys import check_layout_name, parse_key
from deltaglider_proxy.engine.layout import LayoutObject, LayoutRecordMissing
from deltaglider_proxy.engine.objects import NewObject, ObjectEngine, ObjectInfo
from deltaglider_proxy.engine.spool import SpooledFile, SpoolWriter

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
COPY_BATCH = 1024 * 1024


class UploadNotFound(Exception):
    pass


class UploadBusy(Exception):
    """The upload is being completed by another request."""


class PartProblem(Exception):
    """Complete's part list does not match the uploaded parts; ``code`` is the S3 error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TooManyUploads(Exception):
    pass


class LayoutMismatch(Exception):
    """Completing a layout-mode upload as a logical object, or the other way round."""


@dataclass
class PartInfo:
    number: int
    size: int
    md5_hex: str
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return f'"{self.md5_hex}"'


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str | None = None
    user_metadata: dict[str, str] = field(default_factory=dict)
    stored_headers: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    last_activity: float = 0.0
    # Layout mode: the x-amz-meta-* of Create (names without the prefix), the stored object's
    # record. None for a logical upload (and in manifests written before layout mode existed).
    layout_metadata: dict[str, str] | None = None

    @property
    def initiated_at(self) -> datetime:
        return datetime.fromtimestamp(self.initiated, UTC)


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)


def multipart_etag(md5_hexes: list[str]) -> str:
    joined = b"".join(bytes.fromhex(h) for h in md5_hexes)
    return f'"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5_hexes)}"'


def _atomic_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp.{secrets.token_hex(6)}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MultipartStore:
    def __init__(
        self,
        directory: Path,
        engine: ObjectEngine,
        *,
        max_uploads: int = 1000,
        idle_ttl_seconds: float = 24 * 3600,
        checksum_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.directory = directory
        self.engine = engine
        self.max_uploads = max_uploads
        self.idle_ttl_seconds = idle_ttl_seconds
        self.checksum_factory = checksum_factory
        self._uploads: dict[str, Upload] = {}
        self._parts: dict[str, dict[int, PartInfo]] = {}
        self._completing: set[str] = set()

    # ------------------------------------------------------------------ persistence

    def start(self) -> None:
        """Load uploads that survived a restart."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # parts are plaintext, also for encrypted backends
        for upload_dir in self.directory.iterdir():
            manifest = upload_dir / "upload.json"
            try:
                doc = json.loads(manifest.read_text(encoding="utf-8"))
                upload = Upload(**doc)
            except (OSError, ValueError, TypeError):
                shutil.rmtree(upload_dir, ignore_errors=True)
                continue
            parts: dict[int, PartInfo] = {}
            for meta in upload_dir.glob("part-*.json"):
                try:
                    info = PartInfo(**json.loads(meta.read_text(encoding="utf-8")))
                except (OSError, ValueError, TypeError):
                    continue
                if (upload_dir / f"part-{info.number:05d}").is_file():
                    parts[info.number] = info
            self._uploads[upload.upload_id] = upload
            self._parts[upload.upload_id] = parts

    def _dir(self, upload_id: str) -> Path:
        return self.directory / upload_id

    # ------------------------------------------------------------------ operations

    def _get(self, upload_id: str, bucket: str, key: str) -> Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise UploadNotFound(upload_id)
        return upload

    async def create(
        self,
        bucket: str,
        key: str,
        new: NewObject,
        checksum_algorithm: str | None,
        checksum_type: str | None,
        *,
        layout_metadata: Mapping[str, str] | None = None,
    ) -> Upload:
        if len(self._uploads) >= self.max_uploads:
            raise TooManyUploads(f"{len(self._uploads)} uploads open")
        upload_id = secrets.token_hex(16)
        now = time.time()
        upload = Upload(
            upload_id=upload_id,
            bucket=bucket,
            key=key,
            initiated=now,
            content_type=new.content_type,
            user_metadata=dict(new.user_metadata),
            stored_headers=dict(new.stored_headers),
            checksum_algorithm=checksum_algorithm,
            checksum_type=checksum_type,
            last_activity=now,
            layout_metadata=None if layout_metadata is None else dict(layout_metadata),
        )
        directory = self._dir(upload_id)

        def persist() -> None:
            directory.mkdir(parents=True)
            _atomic_json(directory / "upload.json", asdict(upload))

        await asyncio.to_thread(persist)
        self._uploads[upload_id] = upload
        self._parts[upload_id] = {}
        return upload

    async def upload_part(
        self, upload_id: str, bucket: str, key: str, number: int, body: SpooledFile
    ) -> PartInfo:
        try:
            upload = self._get(upload_id, bucket, key)
            if upload_id in self._completing:
                raise UploadBusy(upload_id)
            info = PartInfo(
                number=number,
                size=body.size,
                md5_hex=body.md5_hex,
                last_modified=time.time(),
                checksums=dict(body.checksums),
            )
            directory = self._dir(upload_id)

            def persist() -> None:
                # A spool file is scratch (not synced); an acknowledged part must survive a crash.
                _fsync_path(body.path)
                os.replace(body.path, directory / f"part-{number:05d}")
                _atomic_json(directory / f"part-{number:05d}.json", asdict(info))
                _fsync_path(directory)

            await asyncio.to_thread(persist)
            self._parts[upload_id][number] = info
            upload.last_activity = info.last_modified
            return info
        finally:
            body.discard()

    def parts(self, upload_id: str, bucket: str, key: str) -> tuple[Upload, list[PartInfo]]:
        upload = self._get(upload_id, bucket, key)
        return upload, sorted(self._parts[upload_id].values(), key=lambda p: p.number)

    def uploads(self, bucket: str) -> list[Upload]:
        return sorted(
            (u for u in self._uploads.values() if u.bucket == bucket), key=lambda u: (u.key, u.upload_id)
        )

    def open_count(self, bucket: str) -> int:
        return sum(1 for u in self._uploads.values() if u.bucket == bucket)

    async def abort(self, upload_id: str, bucket: str, key: str) -> None:
        self._get(upload_id, bucket, key)
        if upload_id in self._completing:
            raise UploadBusy("Cannot abort: upload is currently being completed")
        await self._forget(upload_id)

    async def _forget(self, upload_id: str) -> None:
        self._uploads.pop(upload_id, None)
        self._parts.pop(upload_id, None)
        await asyncio.to_thread(shutil.rmtree, self._dir(upload_id), True)

    def _validate(self, upload_id: str, requested: list[CompletedPart]) -> list[PartInfo]:
        if not requested:
            raise PartProblem("InvalidPart", "You must specify at least one part")
        numbers = [part.number for part in requested]
        if any(later <= earlier for earlier, later in itertools.pairwise(numbers)):
            raise PartProblem("InvalidPartOrder", "The list of parts was not in ascending order.")
        uploaded = self._parts[upload_id]
        chosen: list[PartInfo] = []
        for index, part in enumerate(requested):
            info = uploaded.get(part.number)
            if info is None or part.etag.strip('"').lower() != info.md5_hex:
                raise PartProblem(
                    "InvalidPart", f"Part {part.number} was not uploaded or its ETag does not match"
                )
            for algorithm, value in part.checksums.items():
                if info.checksums.get(algorithm) not in (None, value):
                    raise PartProblem("InvalidPart", f"Part {part.number} checksum does not match")
            if index < len(requested) - 1 and info.size < MIN_PART_SIZE:
                raise PartProblem(
                    "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
                )
            chosen.append(info)
        return chosen

    def _composite_checksum(self, upload: Upload, parts: list[PartInfo]) -> dict[str, str]:
        algorithm = upload.checksum_algorithm
        if algorithm is None or self.checksum_factory is None:
            return {}
        if not all(algorithm in p.checksums for p in parts):
            return {}
        hasher = self.checksum_factory(algorithm)
        for part in parts:
            hasher.update(base64.b64decode(part.checksums[algorithm]))
        return {algorithm: f"{hasher.b64digest()}-{len(parts)}"}

    @asynccontextmanager
    async def _completing_upload(
        self, upload_id: str, bucket: str, key: str, *, layout: bool
    ) -> AsyncIterator[Upload]:
        upload = self._get(upload_id, bucket, key)
        if upload_id in self._completing:
            raise UploadBusy("Upload is already being completed")
        if (upload.layout_metadata is not None) != layout:
            raise LayoutMismatch(
                "This upload was started in layout mode; complete it in layout mode"
                if upload.layout_metadata is not None
                else "This upload was not started in layout mode"
            )
        self._completing.add(upload_id)
        try:
            yield upload
        finally:
            self._completing.discard(upload_id)

    async def _assemble(
        self, upload: Upload, requested: list[CompletedPart], *, sealable: bool
    ) -> tuple[SpooledFile, dict[str, str], str]:
        """The listed parts as one spooled file, with its checksums and multipart ETag;
        ``sealable`` when it goes through the engine (which may have it sealed as it is joined)."""
        parts = self._validate(upload.upload_id, requested)
        total = sum(p.size for p in parts)
        if total > self.engine.max_object_size:
            raise PartProblem(
                "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size."
            )
        full_object = upload.checksum_type == "FULL_OBJECT" and upload.checksum_algorithm is not None
        extra = []
        if full_object and self.checksum_factory is not None and upload.checksum_algorithm:
            extra.append((upload.checksum_algorithm, self.checksum_factory(upload.checksum_algorithm)))
        sealed = self.engine.sealing_writer(upload.bucket, total) if sealable else None
        writer = self.engine.spool.writer(total, extra, sealed)
        try:
            directory = self._dir(upload.upload_id)
            for part in parts:
                await self._append(writer, directory / f"part-{part.number:05d}")
            body = await writer.finish()
        except BaseException:
            writer.abort()
            raise
        checksums = body.checksums if full_object else self._composite_checksum(upload, parts)
        return body, checksums, multipart_etag([p.md5_hex for p in parts])

    async def complete(
        self, upload_id: str, bucket: str, key: str, requested: list[CompletedPart]
    ) -> tuple[ObjectInfo, dict[str, str]]:
        async with self._completing_upload(upload_id, bucket, key, layout=False) as upload:
            parse_key(key)
            body, checksums, etag = await self._assemble(upload, requested, sealable=True)
            new = NewObject(
                content_type=upload.content_type,
                user_metadata=upload.user_metadata,
                stored_headers=upload.stored_headers,
                checksums=checksums,
                multipart_etag=etag,
            )
            info = await self.engine.put(bucket, key, body, new)
            await self._forget(upload_id)
            return info, checksums

    async def complete_layout(
        self, upload_id: str, bucket: str, key: str, requested: list[CompletedPart]
    ) -> tuple[LayoutObject, str, dict[str, str]]:
        """Complete a layout-mode upload: the parts become the stored object ``key`` verbatim.
        Returns the object, the multipart ETag and the checksums."""
        async with self._completing_upload(upload_id, bucket, key, layout=True) as upload:
            check_layout_name(key)
            record = self.engine.layout.parse_record(key, upload.layout_metadata or {})
            if record is None:
                raise LayoutRecordMissing()
            body, checksums, etag = await self._assemble(upload, requested, sealable=False)
            stored = await self.engine.layout.write(bucket, key, body, record)
            await self._forget(upload_id)
            return stored, etag, checksums

    async def _append(self, writer: SpoolWriter, path: Path) -> None:
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, COPY_BATCH):
                await writer.write(chunk)
        finally:
            handle.close()

    async def sweep(self) -> int:
        """Drop open uploads idle for longer than the TTL; returns how many went."""
        cutoff = time.time() - self.idle_ttl_seconds
        stale = [
            u.upload_id
            for u in self._uploads.values()
            if u.last_activity < cutoff and u.upload_id not in self._completing
        ]
        for upload_id in stale:
            await self._forget(upload_id)
        return len(stale)
