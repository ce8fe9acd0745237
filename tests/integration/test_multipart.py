"""The multipart family through boto3, incl. the "<md5-of-md5s>-N" ETag, copy parts, checksums."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MIB = 1024 * 1024


def expected_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def test_manual_multipart(s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1234)]
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key="big/file.tar", ContentType="application/x-tar", Metadata={"release": "1.0"}
    )
    upload_id = upload["UploadId"]
    assert len(upload_id) == 32
    etags = []
    for number, data in enumerate(parts, start=1):
        etags.append(
            s3.upload_part(
                Bucket=bucket, Key="big/file.tar", UploadId=upload_id, PartNumber=number, Body=data
            )["ETag"]
        )
    listed = s3.list_parts(Bucket=bucket, Key="big/file.tar", UploadId=upload_id)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [p["Size"] for p in listed["Parts"]] == [len(p) for p in parts]
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["UploadId"] for u in uploads] == [upload_id]
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big/file.tar",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    assert done["ETag"] == expected_etag(parts)
    head = s3.head_object(Bucket=bucket, Key="big/file.tar")
    assert head["ETag"] == expected_etag(parts)
    assert head["ContentType"] == "application/x-tar" and head["Metadata"] == {"release": "1.0"}
    body = s3.get_object(Bucket=bucket, Key="big/file.tar")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(b"".join(parts)).digest()
    listed_objects = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert listed_objects[0]["ETag"] == expected_etag(parts) and listed_objects[0]["Size"] == len(body)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_complete_validation(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="v")["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="v", UploadId=upload_id, PartNumber=1, Body=b"tiny")["ETag"]
    last = s3.upload_part(Bucket=bucket, Key="v", UploadId=upload_id, PartNumber=2, Body=b"end")["ETag"]

    def complete(parts: list[dict[str, Any]]) -> str:
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(
                Bucket=bucket, Key="v", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return str(exc.value.response["Error"]["Code"])

    assert complete([{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}]) == "InvalidPartOrder"
    assert complete([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]) == "InvalidPart"
    assert complete([{"PartNumber": 3, "ETag": last}]) == "InvalidPart"
    assert complete([{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}]) == "EntityTooSmall"
    # the failed completes left the upload usable
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="v",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": small}]},
    )
    assert done["ETag"] == expected_etag([b"tiny"])
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"tiny"


def test_abort_and_unknown_upload(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="a")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="a", UploadId=upload_id, PartNumber=1, Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert exc.value.response["Error"]["Code"] == "BucketNotEmpty"
    s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=upload_id)
    for call in (
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=upload_id),
        lambda: s3.upload_part(Bucket=bucket, Key="a", UploadId=upload_id, PartNumber=1, Body=b"x"),
        lambda: s3.list_parts(Bucket=bucket, Key="a", UploadId=upload_id),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert exc.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="a")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_part_number_range(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="p")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="p", UploadId=upload_id, PartNumber=10001, Body=b"x")
    assert exc.value.response["Error"]["Code"] == "InvalidArgument"


def test_upload_part_copy(s3: Any, bucket: str) -> None:
    source = os.urandom(6 * MIB)
    s3.put_object(Bucket=bucket, Key="src.bin", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="copy.bin")["UploadId"]
    first = s3.upload_part_copy(
        Bucket=bucket,
        Key="copy.bin",
        UploadId=upload_id,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "src.bin"},
        CopySourceRange=f"bytes=0-{5 * MIB - 1}",
    )["CopyPartResult"]["ETag"]
    second = s3.upload_part_copy(
        Bucket=bucket,
        Key="copy.bin",
        UploadId=upload_id,
        PartNumber=2,
        CopySource={"Bucket": bucket, "Key": "src.bin"},
        CopySourceRange=f"bytes={5 * MIB}-{6 * MIB - 1}",
    )["CopyPartResult"]["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="copy.bin",
            UploadId=upload_id,
            PartNumber=3,
            CopySource={"Bucket": bucket, "Key": "src.bin"},
            CopySourceRange="bytes=0-99999999",
        )
    assert exc.value.response["Error"]["Code"] == "InvalidRange"
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="copy.bin",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]},
    )
    assert s3.get_object(Bucket=bucket, Key="copy.bin")["Body"].read() == source


def test_transfer_manager_with_checksums(s3: Any, bucket: str, tmp_path: Any) -> None:
    path = tmp_path / "upload.bin"
    data = os.urandom(17 * MIB + 3)
    path.write_bytes(data)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
    s3.upload_file(
        str(path), bucket, "tm/upload.bin", Config=config, ExtraArgs={"ChecksumAlgorithm": "CRC32"}
    )
    head = s3.head_object(Bucket=bucket, Key="tm/upload.bin")
    assert head["ETag"].endswith('-3"')
    out = tmp_path / "download.bin"
    s3.download_file(bucket, "tm/upload.bin", str(out), Config=config)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
