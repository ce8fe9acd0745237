"""Real command-line S3 clients (aws CLI, rclone, s3cmd) against the real server, compared by SHA-256."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.clients import MIB, AwsCli, Rclone, S3cmd, random_file, sha256_file, tree_digest
from tests.support.server import ProxyServer

pytestmark = pytest.mark.slow

ODD_NAME = "spaced name ü € 日本.txt"


def make_tree(root: Path) -> Path:
    """A few small files, nested directories and a name with spaces and non-ASCII characters."""
    files = {
        "top.txt": b"top level\n",
        "a/one.bin": os.urandom(3000),
        "a/b/two.json": b'{"two": 2}\n',
        "a/b/c/three.dat": os.urandom(70_000),
        f"odd dir/{ODD_NAME}": "unicode ✓\n".encode(),
        # Characters that trip up URL/SigV4 canonicalisation and url-encoded listings.
        "odd dir/a+b 100% #1 (x)&y=z.txt": b"reserved characters\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def keys(s3: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """Key → ETag of everything under ``prefix`` (via boto3, independent of the client under test)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {obj["Key"]: obj["ETag"] for obj in listed}


def assert_missing(s3: Any, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=bucket, Key=key)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# --------------------------------------------------------------------------------------------- aws CLI


@pytest.fixture
def aws(proxy: ProxyServer, tmp_path: Path) -> AwsCli:
    return AwsCli(proxy, tmp_path / "aws-home")


def test_aws_cp_multipart_roundtrip(aws: AwsCli, s3: Any, bucket: str, tmp_path: Path) -> None:
    source = random_file(tmp_path / "up" / "blob.bin", 50 * MIB)
    url = f"s3://{bucket}/big/blob.bin"
    aws("s3", "cp", str(source), url, "--only-show-errors")

    head = s3.head_object(Bucket=bucket, Key="big/blob.bin")
    assert head["ContentLength"] == 50 * MIB
    # 50 MiB in the CLI's default 8 MiB chunks: a 7-part multipart upload.
    assert head["ETag"].endswith('-7"'), head["ETag"]

    listing = aws("s3", "ls", f"s3://{bucket}/big/").stdout
    assert f"{50 * MIB} blob.bin" in listing

    # Download (the CLI fetches it as concurrent ranged GETs).
    target = tmp_path / "down" / "blob.bin"
    aws("s3", "cp", url, str(target), "--only-show-errors")
    assert target.stat().st_size == 50 * MIB
    assert sha256_file(target) == sha256_file(source)

    # Server-side copy of a large object: CreateMultipartUpload + UploadPartCopy with ranges.
    copy_url = f"s3://{bucket}/copies/blob copy.bin"
    aws("s3", "cp", url, copy_url, "--only-show-errors")
    assert s3.head_object(Bucket=bucket, Key="copies/blob copy.bin")["ContentLength"] == 50 * MIB
    copied = tmp_path / "down" / "copy.bin"
    aws("s3", "cp", copy_url, str(copied), "--only-show-errors")
    assert sha256_file(copied) == sha256_file(source)


def test_aws_sync_up_down_and_incremental(aws: AwsCli, s3: Any, bucket: str, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    url = f"s3://{bucket}/tree"
    first = aws("s3", "sync", str(source), url, "--no-progress").stdout
    expected = tree_digest(source)
    assert first.count("upload: ") == len(expected), first

    before = keys(s3, bucket, "tree/")
    assert sorted(before) == sorted(f"tree/{rel}" for rel in expected)

    # Recursive listing paged two keys at a time (url-encoded continuation across odd names).
    paged = aws("s3", "ls", "--recursive", "--page-size", "2", f"{url}/").stdout.splitlines()
    assert sorted(line.split(None, 3)[3] for line in paged) == sorted(f"tree/{rel}" for rel in expected)

    down = tmp_path / "down"
    aws("s3", "sync", url, str(down), "--no-progress")
    assert tree_digest(down) == expected

    # Nothing changed: a second sync must not upload anything.
    again = aws("s3", "sync", str(source), url, "--no-progress").stdout
    assert "upload:" not in again, again

    # Change one file (new size, newer mtime): exactly that one is uploaded again.
    changed = source / "a" / "b" / "two.json"
    changed.write_bytes(b'{"two": 2, "changed": true}\n')
    later = time.time() + 5
    os.utime(changed, (later, later))
    third = aws("s3", "sync", str(source), url, "--no-progress").stdout
    uploads = [line for line in third.splitlines() if line.startswith("upload: ")]
    assert len(uploads) == 1 and uploads[0].endswith(f"{url}/a/b/two.json"), third

    after = keys(s3, bucket, "tree/")
    assert after["tree/a/b/two.json"] != before["tree/a/b/two.json"]
    assert {k: v for k, v in after.items() if k != "tree/a/b/two.json"} == {
        k: v for k, v in before.items() if k != "tree/a/b/two.json"
    }

    # Sync the change down into the earlier copy; --delete propagates a local removal upwards.
    aws("s3", "sync", url, str(down), "--no-progress")
    assert tree_digest(down) == tree_digest(source)
    (source / "top.txt").unlink()
    deleted = aws("s3", "sync", str(source), url, "--delete", "--no-progress").stdout
    assert f"delete: {url}/top.txt" in deleted, deleted
    assert_missing(s3, bucket, "tree/top.txt")


def test_aws_s3api_calls(aws: AwsCli, s3: Any, bucket: str, tmp_path: Path) -> None:
    body = tmp_path / "doc.bin"
    body.write_bytes(b"hello from the aws cli\n")
    put = aws.api(
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "docs/readme.bin",
        "--body",
        str(body),
        "--content-type",
        "application/x-custom",
        "--metadata",
        "owner=alice,build=42",
    )
    assert put["ETag"] == f'"{hashlib.md5(body.read_bytes()).hexdigest()}"'

    head = aws.api("head-object", "--bucket", bucket, "--key", "docs/readme.bin")
    assert head["ContentType"] == "application/x-custom"
    assert head["Metadata"] == {"owner": "alice", "build": "42"}
    assert head["ContentLength"] == body.stat().st_size
    assert head["ETag"] == put["ETag"]

    # A SHA-256 checksum sent by the CLI is verified, stored and returned on request.
    sha_b64 = base64.b64encode(hashlib.sha256(body.read_bytes()).digest()).decode()
    summed = aws.api(
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "docs/summed",
        "--body",
        str(body),
        "--checksum-algorithm",
        "SHA256",
    )
    assert summed["ChecksumSHA256"] == sha_b64
    summed_head = aws.api(
        "head-object", "--bucket", bucket, "--key", "docs/summed", "--checksum-mode", "ENABLED"
    )
    assert summed_head["ChecksumSHA256"] == sha_b64
    aws.api("delete-object", "--bucket", bucket, "--key", "docs/summed")

    for key in ("docs/sub/a.txt", "docs/sub/b.txt", "docs/other/c.txt", "docs/z.txt", "elsewhere.txt"):
        aws.api("put-object", "--bucket", bucket, "--key", key, "--body", str(body))
    # --no-paginate: the CLI's paginator would merge pages and drop KeyCount/Delimiter/IsTruncated.
    listed = aws.api(
        "list-objects-v2", "--bucket", bucket, "--prefix", "docs/", "--delimiter", "/", "--no-paginate"
    )
    assert [c["Key"] for c in listed["Contents"]] == ["docs/readme.bin", "docs/z.txt"]
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["docs/other/", "docs/sub/"]
    assert listed["KeyCount"] == 4
    assert listed["Prefix"] == "docs/" and listed["Delimiter"] == "/" and listed["IsTruncated"] is False

    aws.api("delete-object", "--bucket", bucket, "--key", "docs/readme.bin")
    assert_missing(s3, bucket, "docs/readme.bin")
    gone = aws.raw("s3api", "head-object", "--bucket", bucket, "--key", "docs/readme.bin")
    assert gone.returncode != 0 and "404" in gone.stderr, gone.stderr
    listed = aws.api("list-objects-v2", "--bucket", bucket, "--prefix", "docs/", "--delimiter", "/")
    assert [c["Key"] for c in listed["Contents"]] == ["docs/z.txt"]


# ---------------------------------------------------------------------------------------------- rclone


@pytest.fixture
def rclone(proxy: ProxyServer, tmp_path: Path) -> Rclone:
    return Rclone(proxy, tmp_path / "rclone-home")


def test_rclone_copy_check_lsf_deletefile(rclone: Rclone, s3: Any, bucket: str, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    random_file(source / "big" / "twelve.bin", 12 * MIB)
    remote = f"dg:{bucket}/up"
    chunking = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"]
    rclone("copy", str(source), remote, *chunking)

    expected = tree_digest(source)
    stored = keys(s3, bucket, "up/")
    assert sorted(stored) == sorted(f"up/{rel}" for rel in expected)
    # 12 MiB in 5 MiB chunks: a 3-part multipart upload.
    assert stored["up/big/twelve.bin"].endswith('-3"'), stored["up/big/twelve.bin"]

    rclone("check", str(source), remote)

    back = tmp_path / "back"
    rclone("copy", remote, str(back))
    assert tree_digest(back) == expected

    lsf = rclone("lsf", "-R", "--files-only", remote).stdout.splitlines()
    assert sorted(lsf) == sorted(expected)
    # The same listing paged two keys at a time, with ListObjects v1 (marker) and v2 (token).
    for version in ("1", "2"):
        paged = rclone(
            "lsf", "-R", "--files-only", "--s3-list-chunk", "2", "--s3-list-version", version, remote
        )
        assert sorted(paged.stdout.splitlines()) == sorted(expected), version
    top = rclone("lsf", remote).stdout.splitlines()
    assert sorted(top) == ["a/", "big/", "empty.txt", "odd dir/", "top.txt"]

    rclone("deletefile", f"{remote}/odd dir/{ODD_NAME}")
    assert_missing(s3, bucket, f"up/odd dir/{ODD_NAME}")
    lsf = rclone("lsf", "-R", "--files-only", remote).stdout.splitlines()
    assert f"odd dir/{ODD_NAME}" not in lsf and len(lsf) == len(expected) - 1

    # rclone check must notice content that differs behind its back.
    s3.put_object(Bucket=bucket, Key="up/a/one.bin", Body=b"tampered")
    tampered = rclone.raw("check", str(source / "a"), f"{remote}/a")
    assert tampered.returncode != 0, tampered.stderr
    assert "one.bin" in tampered.stderr


# ---------------------------------------------------------------------------------------------- s3cmd


@pytest.fixture
def s3cmd(proxy: ProxyServer, tmp_path: Path) -> S3cmd:
    return S3cmd(proxy, tmp_path / "s3cmd-home")


def test_s3cmd_put_get_ls_info_del(s3cmd: S3cmd, s3: Any, bucket: str, tmp_path: Path) -> None:
    source = random_file(tmp_path / "big.bin", 17 * MIB)
    url = f"s3://{bucket}/dir/big.bin"
    s3cmd(
        "put",
        str(source),
        url,
        "--multipart-chunk-size-mb=5",
        "--mime-type=application/x-test",
        "--add-header=x-amz-meta-color:blue",
    )

    head = s3.head_object(Bucket=bucket, Key="dir/big.bin")
    assert head["ContentLength"] == 17 * MIB
    # 17 MiB in 5 MiB chunks: a 4-part multipart upload.
    assert head["ETag"].endswith('-4"'), head["ETag"]
    assert head["ContentType"] == "application/x-test"
    assert head["Metadata"]["color"] == "blue"

    buckets = s3cmd("ls").stdout
    assert f"s3://{bucket}" in buckets
    listing = s3cmd("ls", f"s3://{bucket}/dir/").stdout
    assert url in listing and str(17 * MIB) in listing, listing

    info = s3cmd("info", url).stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    assert fields["MIME type"] == "application/x-test", info
    assert fields["x-amz-meta-color"] == "blue", info
    assert fields["File size"] == str(17 * MIB), info
    # s3cmd records the whole-file MD5 in its own metadata for multipart uploads and shows it here.
    assert fields["MD5 sum"] == hashlib.md5(source.read_bytes()).hexdigest(), info

    target = tmp_path / "got.bin"
    s3cmd("get", url, str(target))
    assert sha256_file(target) == sha256_file(source)

    s3cmd("del", url)
    assert_missing(s3, bucket, "dir/big.bin")
    assert url not in s3cmd("ls", f"s3://{bucket}/dir/").stdout
