"""The filesystem backend against a real directory (tmp_path must support user xattrs)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deltaglider_proxy.storage import filesystem
from deltaglider_proxy.storage.base import (
    Backend,
    BucketNotEmpty,
    BucketNotFound,
    CommonPrefix,
    DiskFull,
    InvalidObjectName,
    ObjectChanged,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoredObject,
    logical_sort_key,
)
from deltaglider_proxy.storage.filesystem import FilesystemBackend
from deltaglider_proxy.storage.fs_names import split_name
from deltaglider_proxy.storage.metadata import TOOL, FileMetadata, MetadataError

T = TypeVar("T")
BUCKET = "bkt"
MiB = 1024 * 1024


def run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def record_for(name: str, data: bytes) -> FileMetadata:
    # The record codec encodes strict UTF-8 (HTTP keys cannot hold lone surrogates); the backend
    # itself stores such names, so only the record's copy of the name is made encodable.
    filename = name.rsplit("/", 1)[-1].encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return FileMetadata(
        tool=TOOL,
        original_name=filename,
        file_sha256=hashlib.sha256(data).hexdigest(),
        file_size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        created_at=datetime.now(UTC),
        note="passthrough",
        content_type="application/octet-stream",
    )


class Store:
    """A started backend with one bucket plus byte-level helpers (each call runs its own loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend = FilesystemBackend(root / "data")
        self.spool = root / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._sources = itertools.count()
        run(self.backend.start())
        run(self.backend.create_bucket(BUCKET))

    @property
    def space(self) -> Path:
        return self.root / "data" / BUCKET / "deltaspaces"

    async def awrite(
        self, name: str, data: bytes, *, move: bool = False, bucket: str = BUCKET
    ) -> StoredObject:
        source = self.spool / f"src-{threading.get_ident()}-{next(self._sources)}"
        source.write_bytes(data)
        try:
            return await self.backend.write(bucket, name, source, record_for(name, data), move=move)
        finally:
            source.unlink(missing_ok=True)

    async def aread(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.backend.read(BUCKET, name, start, end)])

    async def alist(self, prefix: str = "", start_after: str = "", delimiter: str | None = None) -> list[Any]:
        entries = self.backend.list(BUCKET, prefix, start_after, delimiter)
        return [entry async for entry in entries]

    def write(self, name: str, data: bytes, *, move: bool = False) -> StoredObject:
        return run(self.awrite(name, data, move=move))

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        return run(self.aread(name, start, end))

    def names(self, prefix: str = "", start_after: str = "", delimiter: str | None = None) -> list[str]:
        return [_label(e) for e in run(self.alist(prefix, start_after, delimiter))]

    def delete(self, name: str) -> bool:
        return run(self.backend.delete(BUCKET, name))

    def head(self, name: str) -> StoredObject | None:
        return run(self.backend.head(BUCKET, name))


def _label(entry: StoredObject | CommonPrefix) -> str:
    return f"CP:{entry.name}" if isinstance(entry, CommonPrefix) else entry.name


def _require_xattrs(directory: Path) -> None:
    probe = directory / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.test", b"1")
    except OSError as exc:
        pytest.fail(
            f"{directory} lacks user xattr support ({exc}); run pytest with --basetemp on ext4/XFS/Btrfs"
        )
    finally:
        probe.unlink()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    _require_xattrs(tmp_path)
    return Store(tmp_path)


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


TRICKY_NAMES = [
    "plain.txt",
    "releases/v1/app.zip.delta",
    "releases/reference.bin",
    "a//b",
    "a///",
    "photos/",
    "x" * 250,
    "dir/" + "é" * 150,
    "deep/" + "/".join(["seg"] * 40),
    ".env",
    "dir/.hidden",
    ".dg.self",
    ".dg.empty",
    ".dg.tmp.notreally",
    ".dg.h.0123456789012345678901234567890123456789",
    "sp ace/p%25lus+/back\\slash",
    "ctrl\x01\x1f\x7f/tab\there",
    "emoji/😀/🎉",
    "k" * 1024,
    "/".join(["s"] * 512),
    "a" + "/" * 1023,
]


def test_implements_the_backend_protocol(tmp_path: Path) -> None:
    backend: Backend = FilesystemBackend(tmp_path)  # checked by mypy --strict
    assert backend is not None


@pytest.mark.parametrize("name", TRICKY_NAMES, ids=range(len(TRICKY_NAMES)))
def test_tricky_names_round_trip(store: Store, name: str) -> None:
    data = f"content of {name!r}".encode("utf-8", "surrogatepass")
    stored = store.write(name, data)
    assert stored.name == name and stored.size == len(data) and stored.record is not None
    assert store.read(name) == data
    head = store.head(name)
    assert head is not None and head.record is not None
    assert head.size == len(data) and head.etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert store.names() == [name]
    assert store.delete(name) is True
    assert store.head(name) is None
    assert store.names() == []
    assert list(store.space.iterdir()) == []  # every directory it needed was pruned


_KEY_CHARS = st.characters(exclude_characters=["\x00"], exclude_categories=[])
keys = st.text(st.one_of(st.sampled_from("/./a"), _KEY_CHARS), min_size=1, max_size=300)


def _valid(name: str) -> bool:
    try:
        split_name(name)
    except InvalidObjectName:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=keys)
def test_any_valid_key_round_trips(tmp_path: Path, name: str) -> None:
    assume(_valid(name))
    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        store = Store(Path(directory))
        data = name.encode("utf-8", "surrogatepass")
        store.write(name, data)
        assert store.read(name) == data
        assert store.names() == [name]
        assert store.delete(name)
        assert list(store.space.iterdir()) == []


@pytest.mark.parametrize(
    ("outer", "inner"),
    [("a", "a/b"), ("x.delta", "x.delta/y"), ("reference.bin", "reference.bin/v1.zip.delta"), ("m/", "m//n")],
)
@pytest.mark.parametrize("outer_first", [True, False])
def test_name_and_its_children_coexist(store: Store, outer: str, inner: str, outer_first: bool) -> None:
    first, second = (outer, inner) if outer_first else (inner, outer)
    store.write(first, b"first")
    assert store.read(first) == b"first"
    store.write(second, b"second")
    assert store.read(first) == b"first"
    assert store.read(second) == b"second"
    store.write(outer, b"outer v2")  # overwrite once the path is a directory
    assert store.read(outer) == b"outer v2" and store.read(inner) == (b"second" if outer_first else b"first")
    assert sorted(store.names(), key=logical_sort_key) == sorted([outer, inner], key=logical_sort_key)
    assert store.delete(outer)
    with pytest.raises(ObjectNotFound):
        store.read(outer)
    assert store.head(inner) is not None
    assert store.delete(inner)
    assert list(store.space.iterdir()) == []


def test_directory_is_not_an_object_unless_it_holds_self(store: Store) -> None:
    store.write("d/e", b"x")
    assert store.head("d") is None
    assert store.delete("d") is False
    with pytest.raises(ObjectNotFound):
        store.read("d")
    store.write("d", b"self")
    assert (store.space / "d" / ".dg.self").read_bytes() == b"self"
    assert store.delete("d/e")
    assert (store.space / "d").is_dir()  # only .dg.self left: stays a directory
    assert store.read("d") == b"self"


def test_directory_marker(store: Store) -> None:
    marker = run(store.backend.write_directory_marker(BUCKET, "photos/"))
    assert (store.space / "photos" / ".dg.empty").stat().st_size == 0
    head = store.head("photos/")
    assert head is not None and head.record is not None
    assert head.record.md5 == "d41d8cd98f00b204e9800998ecf8427e" and head.record.note == "passthrough"
    assert head.content_type == "application/x-directory" and head.size == 0
    assert marker.etag == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert store.names() == ["photos/"]
    assert store.names(delimiter="/") == ["CP:photos/"]
    assert store.names(prefix="photos/", delimiter="/") == ["photos/"]
    with pytest.raises(InvalidObjectName):
        run(store.backend.write_directory_marker(BUCKET, "photos"))


def test_missing_objects(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        store.read("nope")
    assert store.head("nope") is None
    assert store.head("nope/deeper") is None
    assert store.delete("nope") is False
    store.write("file", b"x")
    assert store.head("file/child") is None  # a file on the path is not a directory


def test_range_reads_stream_in_chunks(store: Store) -> None:
    data = os.urandom(2 * MiB + 12345)
    store.write("big", data)
    assert store.read("big") == data
    assert store.read("big", 10, 20) == data[10:20]
    assert store.read("big", MiB - 5, 2 * MiB + 7) == data[MiB - 5 : 2 * MiB + 7]
    assert store.read("big", 2 * MiB) == data[2 * MiB :]
    assert store.read("big", 0, 10 * MiB) == data
    assert store.read("big", len(data) + 5) == b""

    async def chunk_sizes() -> list[int]:
        return [len(chunk) async for chunk in store.backend.read(BUCKET, "big")]

    sizes = run(chunk_sizes())
    assert max(sizes) <= MiB and sum(sizes) == len(data) and len(sizes) == 3


def test_move_takes_the_source(store: Store) -> None:
    source = store.spool / "moved"
    source.write_bytes(b"moved bytes")
    run(store.backend.write(BUCKET, "m/obj", source, record_for("m/obj", b"moved bytes"), move=True))
    assert not source.exists()
    assert store.read("m/obj") == b"moved bytes"
    assert os.getxattr(store.space / "m" / "obj", "user.dg.metadata").startswith(b"{")


def test_missing_source_is_a_storage_error(store: Store) -> None:
    for move in (False, True):
        with pytest.raises(StorageError):
            run(store.backend.write(BUCKET, "x", store.spool / "absent", record_for("x", b""), move=move))


def test_unmanaged_and_corrupt_metadata(store: Store) -> None:
    (store.space / "outside.bin").write_bytes(b"12345")
    head = store.head("outside.bin")
    assert head is not None and head.record is None and head.size == 5 and head.etag is None
    assert store.read("outside.bin") == b"12345"
    os.setxattr(store.space / "outside.bin", "user.dg.metadata", b"{not json")
    with pytest.raises(MetadataError):
        store.head("outside.bin")
    assert store.names() == ["outside.bin"]  # listing defers the record to head()


def test_listing_entries_are_cheap(store: Store) -> None:
    store.write("a/b", b"123")
    (entry,) = run(store.alist())
    assert isinstance(entry, StoredObject)
    assert entry.name == "a/b" and entry.size == 3 and entry.record_loaded is False and entry.record is None


# ---------------------------------------------------------------------------------------------
# Listing order and filters against an oracle
# ---------------------------------------------------------------------------------------------


def oracle(names: Iterable[str], prefix: str, start_after: str, delimiter: str | None) -> list[str]:
    """S3 semantics over logical keys: what list() must produce, in order."""
    after = start_after.encode("utf-8", "surrogatepass") if start_after else None
    rows: list[tuple[bytes, bytes, str]] = []
    rollups: set[str] = set()
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if delimiter and delimiter in rest:
            rollups.add(prefix + rest[: rest.index(delimiter) + 1])
            continue
        key = logical_sort_key(name)
        if after is None or key > after:
            rows.append((key, name.encode("utf-8", "surrogatepass"), name))
    for rollup in rollups:
        key = rollup.encode("utf-8", "surrogatepass")
        if after is None or key > after:
            rows.append((key, key, f"CP:{rollup}"))
    return [label for _key, _tiebreak, label in sorted(rows)]


SEGMENT_POOL = [
    "a",
    "b",
    "a.delta",
    "x.delta",
    ".delta",
    "",
    "reference.bin",
    ".dg.self",
    ".env",
    "a b",
    "a-",
    "a.b",
    "ä",
    "L" * 201,
    "%+\\",
    "\x01",
]
pool_names = st.lists(st.sampled_from(SEGMENT_POOL), min_size=1, max_size=4).map("/".join).filter(_valid)


@st.composite
def cursor(draw: st.DrawFn, names: list[str]) -> str:
    """A prefix or start_after: a piece of a stored name, a logical key, or something unrelated."""
    name = draw(st.sampled_from(names))
    return draw(
        st.one_of(
            st.just(""),
            st.integers(0, min(len(name), 4)).map(lambda n: name[:n]),
            st.integers(0, len(name)).map(lambda n: name[:n]),
            st.just(name.removesuffix(".delta")),
            st.sampled_from(["a", "a/", "a.", "a/b", "x", "ä", "b/", "L", "\x00", "../", "a/./"]),
        )
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(pool_names, min_size=3, max_size=20, unique=True), data=st.data())
def test_listing_matches_oracle(tmp_path: Path, names: list[str], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
        store = Store(Path(directory))
        for name in names:
            store.write(name, name.encode("utf-8", "surrogatepass"))
        for _query in range(8):
            prefix = data.draw(cursor(names), label="prefix")
            start_after = data.draw(cursor(names), label="start_after")
            delimiter = data.draw(st.sampled_from([None, "/"]), label="delimiter")
            assert store.names(prefix, start_after, delimiter) == oracle(
                names, prefix, start_after, delimiter
            )


def test_listing_order_and_prefix_semantics(store: Store) -> None:
    names = "rel.zip releases/v1/app.zip.delta releases/v1/app.zip releases/reference.bin relative"
    for name in [*names.split(), "x.delta", "x-y", "x", "x/z"]:
        store.write(name, b"1")
    assert store.names("rel") == [
        "rel.zip",
        "relative",
        "releases/reference.bin",
        "releases/v1/app.zip",
        "releases/v1/app.zip.delta",
    ]
    # x.delta sorts as x (next to it), before x-y; the directory x sorts as x/.
    assert store.names("x") == ["x", "x.delta", "x-y", "x/z"]
    assert store.names("x", start_after="x") == ["x-y", "x/z"]
    assert store.names("rel", delimiter="/") == ["rel.zip", "relative", "CP:releases/"]
    assert store.names("releases/", delimiter="/") == ["releases/reference.bin", "CP:releases/v1/"]
    assert store.names("rel", start_after="releases/", delimiter="/") == []
    # app.zip.delta has the logical key releases/v1/app.zip: not after itself.
    assert store.names("rel", start_after="releases/v1/app.zip") == []


def test_rollups_skip_directories_without_objects(store: Store) -> None:
    store.write("full/x", b"1")
    store.write("selfonly", b"1")
    store.write("selfonly/y", b"1")
    store.delete("selfonly/y")  # leaves selfonly/ holding just .dg.self
    (store.space / "empty" / "deeper" / "still").mkdir(parents=True)
    (store.space / "temps").mkdir()
    (store.space / "temps" / ".dg.tmp.abc").write_bytes(b"partial")
    (store.space / "nested" / "a").mkdir(parents=True)
    store.write("nested/a/b", b"1")
    store.delete("nested/a/b")
    store.write("nested/a", b"deep self")  # nested/ holds an object only through a/.dg.self
    assert store.names(delimiter="/") == ["CP:full/", "CP:nested/", "selfonly"]
    assert store.names() == ["full/x", "nested/a", "selfonly"]


def test_listing_missing_bucket_and_bad_arguments(store: Store) -> None:
    async def collect(bucket: str, prefix: str = "", delimiter: str | None = None) -> list[Any]:
        return [entry async for entry in store.backend.list(bucket, prefix, "", delimiter)]

    with pytest.raises(BucketNotFound):
        run(collect("missing"))
    with pytest.raises(BucketNotFound):
        run(collect("missing", prefix="../"))
    with pytest.raises(ValueError):
        run(collect(BUCKET, delimiter="-"))
    store.write("a", b"1")
    for prefix in ("../", "a/../", "./", "/a", "\x00"):
        assert run(collect(BUCKET, prefix=prefix)) == []


# ---------------------------------------------------------------------------------------------
# Pruning, temp files, safety
# ---------------------------------------------------------------------------------------------


def test_delete_prunes_empty_directories(store: Store) -> None:
    store.write("a/b/c/d", b"1")
    store.write("a/keep", b"1")
    assert store.delete("a/b/c/d")
    assert sorted(tree(store.space)) == ["a", "a/keep"]
    assert store.delete("a/keep")
    assert tree(store.space) == set()
    assert (store.space).is_dir()  # never pruned itself


def test_temp_files_are_invisible_and_swept(store: Store) -> None:
    store.write("d/real", b"real")
    leftovers = [store.space / ".dg.tmp.deadbeef", store.space / "d" / ".dg.tmp.cafe"]
    for path in leftovers:
        path.write_bytes(b"half-written")
    (store.space / "d" / ".dg.tmp.dir").mkdir()
    (store.space / "d" / ".dg.tmp.dir" / ".dg.self").write_bytes(b"link")
    assert store.names() == ["d/real"]
    assert store.names(delimiter="/") == ["CP:d/"]
    for name in (".dg.tmp.deadbeef", "d/.dg.tmp.cafe"):
        assert store.head(name) is None
        with pytest.raises(ObjectNotFound):
            store.read(name)
    assert run(store.backend.sweep_temp_files()) == 0  # fresh: may belong to a live writer
    assert run(store.backend.sweep_temp_files(max_age=0)) == 3
    assert sorted(tree(store.space)) == ["d", "d/real"]


def test_start_sweeps_old_temp_files(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    (store.space / ".dg.tmp.old").write_bytes(b"x")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 2 * 3600)
    run(store.backend.start())
    assert tree(store.space) == set()


HOSTILE = ["../escape", "a/../../escape", "/etc/passwd", "a\x00b", ".", "..", "a/./b", "a/..", "", "./x"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_rejected(store: Store, name: str) -> None:
    before = tree(store.root)
    with pytest.raises(InvalidObjectName):
        store.write(name, b"evil")
    with pytest.raises(InvalidObjectName):
        store.read(name)
    with pytest.raises(InvalidObjectName):
        store.head(name)
    with pytest.raises(InvalidObjectName):
        store.delete(name)
    assert tree(store.root) == before


@pytest.mark.parametrize("bucket", ["..", ".", "a/b", ".hidden", "", "x\x00"])
def test_hostile_bucket_names_are_rejected(store: Store, bucket: str) -> None:
    before = tree(store.root)
    for call in (
        lambda: store.backend.create_bucket(bucket),
        lambda: store.backend.bucket_exists(bucket),
        lambda: store.backend.head(bucket, "x"),
        lambda: store.awrite("x", b"1", bucket=bucket),
    ):
        with pytest.raises(InvalidObjectName):
            run(call())
    assert tree(store.root) == before


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "per-component"])
def test_symlinks_in_the_tree_are_not_followed(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openat2: bool
) -> None:
    monkeypatch.setattr(filesystem, "_openat2_usable", openat2)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_bytes(b"secret")
    (outside / "sub" / "secret").write_bytes(b"secret")
    (store.space / "link").symlink_to(outside)
    (store.space / "filelink").symlink_to(outside / "secret")
    (store.space / "a").mkdir()
    (store.space / "a" / "link").symlink_to(outside)
    for name in ("link/secret", "filelink", "a/link/secret", "a/link/sub/secret"):
        assert store.head(name) is None
        with pytest.raises(ObjectNotFound):
            store.read(name)
        assert store.delete(name) is False
    assert store.names() == [] and store.names("a/link/") == [] and store.names("a/link/sub/") == []
    for name in ("link/new", "a/link/new", "a/link/sub/new"):
        with pytest.raises(StorageError):
            store.write(name, b"x")
    assert tree(outside) == {"secret", "sub", "sub/secret"}


def test_deep_keys_without_openat2(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filesystem, "_openat2_usable", False)
    name = "a" + "/" * 1023
    store.write(name, b"deep")
    assert store.read(name) == b"deep" and store.names() == [name]
    assert store.delete(name) and tree(store.space) == set()


def test_probe_requires_xattrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_xattrs(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    root = tmp_path / "noxattr"
    with pytest.raises(StorageError) as info:
        run(FilesystemBackend(root).start())
    message = str(info.value)
    assert str(root) in message and "xattr" in message
    for word in ("ext4", "XFS", "Btrfs", "ZFS", "tmpfs"):
        assert word in message
    assert list(root.iterdir()) == []  # the probe file is gone


def test_start_recovers_from_a_crashed_probe(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / ".dg_xattr_probe").mkdir(parents=True)  # after the exchange, the probe name is the dir
    (root / ".dg_rename_probe").write_bytes(b"")
    run(FilesystemBackend(root).start())
    assert list(root.iterdir()) == []


def test_disk_full_is_reported_and_leaves_no_temp(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write("dir/old", b"old")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull):
        store.write("dir/old", b"new")
    monkeypatch.undo()
    assert store.read("dir/old") == b"old"
    assert sorted(tree(store.space)) == ["dir", "dir/old"]


# ---------------------------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------------------------


def test_bucket_lifecycle(store: Store) -> None:
    backend = store.backend
    assert run(backend.create_bucket("second")) is True
    assert run(backend.create_bucket("second")) is False
    (store.root / "data" / ".deltaglider").mkdir()  # proxy state beside the buckets
    assert [b.name for b in run(backend.list_buckets())] == [BUCKET, "second"]
    assert run(backend.bucket_exists("second")) and not run(backend.bucket_exists("third"))
    with pytest.raises(BucketNotFound):
        run(store.awrite("x", b"1", bucket="third"))
    assert not (store.root / "data" / "third").exists()  # never created implicitly

    run(store.awrite("a/b/c", b"12345", bucket="second"))
    run(store.awrite("d", b"123", bucket="second"))
    assert run(backend.usage_bytes("second")) == 8
    with pytest.raises(BucketNotEmpty):
        run(backend.delete_bucket("second"))
    run(backend.delete("second", "a/b/c"))
    run(backend.delete("second", "d"))
    space = store.root / "data" / "second" / "deltaspaces"
    (space / "leftover" / "dirs").mkdir(parents=True)
    (space / "leftover" / ".dg.tmp.x").write_bytes(b"junk")
    run(backend.delete_bucket("second"))
    assert not (store.root / "data" / "second").exists()
    with pytest.raises(BucketNotFound):
        run(backend.delete_bucket("second"))
    with pytest.raises(BucketNotFound):
        run(backend.usage_bytes("second"))


def test_foreign_files_keep_a_bucket(store: Store) -> None:
    (store.space / "x").mkdir()
    (store.space / "x" / ("n" * 230)).write_bytes(b"unaddressable but data")
    assert store.names() == []  # not a name we could have written
    with pytest.raises(BucketNotEmpty):
        run(store.backend.delete_bucket(BUCKET))


# ---------------------------------------------------------------------------------------------
# Atomicity under concurrent readers
# ---------------------------------------------------------------------------------------------


def payload(version: int, size: int) -> bytes:
    """Self-describing content: a torn or mixed read fails the trailing digest."""
    body = f"version {version}\n".encode() + bytes([version % 256]) * size
    return body + hashlib.sha256(body).digest()


def intact(data: bytes) -> bool:
    return len(data) > 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


def reader_thread(
    check: Callable[[], Awaitable[None]], stop: threading.Event, errors: list[BaseException]
) -> int:
    """Run ``check`` in a loop on its own event loop until ``stop``; returns iterations."""
    count = 0

    async def loop() -> None:
        nonlocal count
        while not stop.is_set():
            await check()
            count += 1

    try:
        asyncio.run(loop())
    except BaseException as exc:  # noqa: BLE001 - reported to the main thread
        errors.append(exc)
    return count


def test_overwrites_are_atomic_for_readers(store: Store) -> None:
    store.write("hot/object", payload(0, 100))
    stop, reads = threading.Event(), []
    errors: list[BaseException] = []

    async def check() -> None:
        data = await store.aread("hot/object")
        assert intact(data), "torn read"

    thread = threading.Thread(target=lambda: reads.append(reader_thread(check, stop, errors)))
    thread.start()
    try:
        for version in range(1, 201):
            size = (version * 7919) % (MiB + MiB // 2) + 1  # often more than one read chunk
            store.write("hot/object", payload(version, size), move=version % 2 == 0)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert reads[0] > 0
    assert store.read("hot/object") == payload(200, (200 * 7919) % (MiB + MiB // 2) + 1)


def test_file_to_directory_conversion_is_atomic_for_readers(store: Store) -> None:
    published: list[str] = []
    checked: list[str] = []
    stop, reads = threading.Event(), []
    errors: list[BaseException] = []

    async def check() -> None:
        # The newest name is the one being converted; an older one checks what conversion left.
        for name in published[-1:] + published[-2:-1]:
            assert await store.aread(name) == name.encode(), name
            checked.append(name)

    thread = threading.Thread(target=lambda: reads.append(reader_thread(check, stop, errors)))
    thread.start()
    try:
        for index in range(40):
            name = f"p/a{index}"
            store.write(name, name.encode())
            published.append(name)
            for child in range(3):
                store.write(f"{name}/b{child}", b"child")  # the first one converts p/aN
            store.write(name, name.encode())  # and an overwrite lands in .dg.self
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert len(checked) > 100
    assert all((store.space / "p" / f"a{index}" / ".dg.self").is_file() for index in range(40))


@pytest.mark.parametrize("name", ["rel/reference.bin", "a"])
def test_create_only_write_never_replaces(store: Store, name: str) -> None:
    store.write(name, b"first")
    if name == "a":
        store.write("a/b", b"child")  # the file now lives inside a directory as .dg.self
    source = store.spool / "create-only"
    source.write_bytes(b"second")
    with pytest.raises(ObjectExists):
        run(store.backend.write(BUCKET, name, source, record_for(name, b"second"), if_absent=True))
    assert store.read(name) == b"first"
    assert source.read_bytes() == b"second"  # not consumed
    assert not [p for p in store.space.rglob(".dg.tmp*")]
    store.delete(name)
    run(store.backend.write(BUCKET, name, source, record_for(name, b"second"), if_absent=True))
    assert store.read(name) == b"second"


# --- replace-this-version writes (if_match) ------------------------------------------------------


def test_if_match_replaces_only_the_version_it_names(store: Store) -> None:
    first = store.write("rot/obj.bin", b"version one")
    assert first.version is not None
    assert store.head("rot/obj.bin").version == first.version  # type: ignore[union-attr]
    # Another process (a second backend on the same root) overwrites it in between.
    other = Store.__new__(Store)
    other.root, other.spool, other._sources = store.root, store.spool, itertools.count(10_000)
    other.backend = FilesystemBackend(store.root / "data")
    run(other.backend.start())
    other.write("rot/obj.bin", b"a client's newer write")
    source = store.spool / "rotated"
    source.write_bytes(b"version one, re-sealed")
    with pytest.raises(ObjectChanged):
        run(
            store.backend.write(
                BUCKET,
                "rot/obj.bin",
                source,
                record_for("rot/obj.bin", b"x"),
                move=True,
                if_match=first.version,
            )
        )
    assert store.read("rot/obj.bin") == b"a client's newer write"
    source.write_bytes(b"version one, re-sealed")  # move=True may have taken it
    assert not [p for p in tree(store.root / "data") if ".dg.tmp." in p]
    current = store.head("rot/obj.bin")
    assert current is not None and current.version != first.version
    replaced = run(
        store.backend.write(
            BUCKET,
            "rot/obj.bin",
            source,
            record_for("rot/obj.bin", b"y"),
            move=True,
            if_match=current.version,
        )
    )
    assert store.read("rot/obj.bin") == b"version one, re-sealed"
    assert replaced.version == store.head("rot/obj.bin").version  # type: ignore[union-attr]


def test_if_match_does_not_bring_back_a_deleted_object(store: Store) -> None:
    first = store.write("gone.bin", b"old")
    assert store.delete("gone.bin")
    source = store.spool / "late"
    source.write_bytes(b"resurrected?")
    with pytest.raises(ObjectChanged):
        run(
            store.backend.write(
                BUCKET, "gone.bin", source, record_for("gone.bin", b"r"), if_match=first.version
            )
        )
    assert store.head("gone.bin") is None


def test_an_object_keeps_its_version_when_it_becomes_a_directory(store: Store) -> None:
    first = store.write("a", b"file that gets children")
    store.write("a/child", b"child")  # "a" is now a directory holding .dg.self
    assert store.head("a").version == first.version  # type: ignore[union-attr]
    source = store.spool / "again"
    source.write_bytes(b"rewritten in place")
    run(store.backend.write(BUCKET, "a", source, record_for("a", b"z"), if_match=first.version))
    assert store.read("a") == b"rewritten in place"
    assert store.read("a/child") == b"child"


# ---------------------------------------------------------------------------------------------
# Pinned opens: one fd for record, size and bytes
# ---------------------------------------------------------------------------------------------


def test_pinned_open_keeps_the_old_object_while_it_is_replaced(store: Store) -> None:
    old, new = payload(1, 2 * MiB + 99), payload(2, 5000)
    store.write("hot/pinned", old)

    async def scenario() -> tuple[StoredObject, bytes, bytes]:
        pinned = await store.backend.open_pinned(BUCKET, "hot/pinned", head_bytes=16)
        try:
            body = pinned.stream()
            first = await anext(body)
            await store.awrite("hot/pinned", new)  # renamed over the object mid-read
            rest = b"".join([chunk async for chunk in body])
            return pinned.stored, pinned.head, first + rest
        finally:
            pinned.close()

    stored, head, body = run(scenario())
    assert body == old and head == old[:16]
    assert stored.size == len(old) and stored.record is not None
    assert stored.record.file_sha256 == hashlib.sha256(old).hexdigest()
    assert store.read("hot/pinned") == new  # what a new open sees


def test_pinned_record_comes_from_the_open_fd(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object is replaced right after the open, before its record is read: the record must
    still be the one of the file that was opened, not of whatever the name holds by then."""
    old, new = payload(1, 3000), payload(2, 7000)
    store.write("raced", old)
    replacement = store.spool / "replacement"
    replacement.write_bytes(new)
    real_open = filesystem.FilesystemBackend._open_object

    def open_then_replace(self: FilesystemBackend, *args: Any) -> Any:
        opened = real_open(self, *args)
        if replacement.exists():
            record = filesystem.to_xattr_json(record_for("raced", new))
            self._write(BUCKET, split_name("raced"), replacement, record, True)
        return opened

    monkeypatch.setattr(filesystem.FilesystemBackend, "_open_object", open_then_replace)

    async def scenario() -> tuple[StoredObject, bytes]:
        pinned = await store.backend.open_pinned(BUCKET, "raced")
        try:
            return pinned.stored, b"".join([chunk async for chunk in pinned.stream()])
        finally:
            pinned.close()

    stored, body = run(scenario())
    assert not replacement.exists()  # the replacement did happen
    assert body == old and stored.size == len(old)
    assert stored.record is not None and stored.record.file_size == len(old)
    assert store.read("raced") == new  # while the name holds the replacement


def test_pinned_open_of_a_missing_object(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        run(store.backend.open_pinned(BUCKET, "absent"))
    with pytest.raises(BucketNotFound):
        run(store.backend.open_pinned("no-such-bucket", "x"))


def test_cancelled_read_closes_its_fd_only_after_the_pread_in_flight(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * MiB)
    store.write("slow", data)
    held, release = threading.Event(), threading.Event()
    seen: list[tuple[int, bytes]] = []
    real_pread = os.pread

    def held_pread(fd: int, length: int, offset: int) -> bytes:
        if offset == MiB:  # the second chunk stays in flight until the reader is gone
            held.set()
            release.wait()
            seen.append((fd, real_pread(fd, length, offset)))
            return seen[-1][1]
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", held_pread)

    async def scenario() -> int:
        async def consume() -> None:
            async for _chunk in store.backend.read(BUCKET, "slow"):
                pass

        task = asyncio.create_task(consume())
        try:
            await asyncio.to_thread(held.wait)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            fd = open_fds_of(store.space / "slow")
            assert len(fd) == 1, "closed while its pread was still running"
        finally:
            release.set()
        await asyncio.get_running_loop().shutdown_default_executor()  # the pread returned
        await asyncio.sleep(0)
        return fd[0]

    fd = run(scenario())
    assert seen == [(fd, data[MiB : 2 * MiB])]  # the pread read the object, not a reused fd
    assert open_fds_of(store.space / "slow") == []


def test_cancelled_open_leaks_no_fd(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write("opened", b"bytes")
    opening, release = threading.Event(), threading.Event()
    real_open = filesystem.FilesystemBackend._open_object

    def held_open(self: FilesystemBackend, *args: Any) -> Any:
        opened = real_open(self, *args)
        opening.set()
        release.wait()
        return opened

    monkeypatch.setattr(filesystem.FilesystemBackend, "_open_object", held_open)

    async def scenario() -> None:
        task = asyncio.create_task(store.backend.open_pinned(BUCKET, "opened"))
        try:
            await asyncio.to_thread(opening.wait)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()
        await asyncio.get_running_loop().shutdown_default_executor()
        await asyncio.sleep(0)

    run(scenario())
    assert open_fds_of(store.space / "opened") == []


def open_fds_of(path: Path) -> list[int]:
    """This process's fds open on ``path``."""
    found = []
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == str(path):
                found.append(int(entry))
    return found


def test_pinned_file_after_close(store: Store) -> None:
    store.write("closed", b"abc")

    async def scenario() -> None:
        pinned = await store.backend.open_pinned(BUCKET, "closed")
        assert await pinned.run(os.pread, 3, 0) == b"abc"
        pinned.close()
        pinned.close()  # idempotent
        with pytest.raises(RuntimeError, match="after close"):
            pinned.submit(os.pread, 3, 0)

    run(scenario())
    assert open_fds_of(store.space / "closed") == []
