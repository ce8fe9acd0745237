"""Per-user authorisation through boto3 with each user's own keys (control-plane.md §3, §13)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.admin import Admin, allow, deny, iam_proxy, s3_for
from tests.support.server import ProxyServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    proxy = iam_proxy(tmp_path_factory.mktemp("iam-users"))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def admin(server: ProxyServer) -> Admin:
    client = Admin(server.endpoint)
    assert client.login().status_code == 200
    return client


@pytest.fixture
def buckets(server: ProxyServer, admin: Admin) -> Iterator[tuple[str, str]]:
    """Two buckets with content, made with the bootstrap pair (legacy-admin after migration)."""
    root = make_client(server.endpoint)
    names = (f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}")
    for name in names:
        root.create_bucket(Bucket=name)
        for key in ("team/one.txt", "team/sub/two.txt", "private/secret.txt", "top.txt"):
            root.put_object(Bucket=name, Key=key, Body=f"{name}/{key}".encode())
    yield names
    for user in admin.ok("GET", "/users"):
        if user["name"] != "legacy-admin":
            admin.ok("DELETE", f"/users/{user['id']}?force=true", status=204)
    admin.delete_all_groups()


def code(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_first_user_migrates_the_bootstrap_pair_and_mode_becomes_iam(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    admin.create_user("reader", [allow(["read", "list"], [f"{a}/*"])])
    names = [u["name"] for u in admin.ok("GET", "/users")]
    assert "legacy-admin" in names
    assert requests.get(f"{server.endpoint}/_/api/whoami").json()["mode"] == "iam"
    # Existing clients signed with the bootstrap pair keep working, now as legacy-admin.
    assert make_client(server.endpoint).get_object(Bucket=a, Key="top.txt")["Body"].read()


def test_reader_reads_but_cannot_write_delete_or_touch_other_buckets(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    user = admin.create_user("reader", [allow(["read", "list"], [f"{a}/*"])])
    assert "secret_access_key" in user and len(user["access_key_id"]) == 20
    s3 = s3_for(server.endpoint, user)
    assert s3.get_object(Bucket=a, Key="top.txt")["Body"].read() == f"{a}/top.txt".encode()
    assert keys(s3, a) == ["private/secret.txt", "team/one.txt", "team/sub/two.txt", "top.txt"]
    assert code(lambda: s3.put_object(Bucket=a, Key="new", Body=b"x")) == "AccessDenied"
    assert code(lambda: s3.delete_object(Bucket=a, Key="top.txt")) == "AccessDenied"
    assert code(lambda: s3.get_object(Bucket=b, Key="top.txt")) == "AccessDenied"
    assert code(lambda: s3.list_objects_v2(Bucket=b)) == "AccessDenied"
    assert code(lambda: s3.create_bucket(Bucket=f"c-{uuid.uuid4().hex[:8]}")) == "AccessDenied"
    assert code(lambda: s3.delete_bucket(Bucket=a)) == "AccessDenied"
    assert [x["Name"] for x in s3.list_buckets()["Buckets"]] == [a]


def test_prefix_scoped_put_get_list_delete(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    user = admin.create_user("team", [allow(["read", "write", "delete", "list"], [f"{a}/team/*"])])
    s3 = s3_for(server.endpoint, user)
    s3.put_object(Bucket=a, Key="team/new.txt", Body=b"mine")
    assert s3.get_object(Bucket=a, Key="team/new.txt")["Body"].read() == b"mine"
    assert code(lambda: s3.put_object(Bucket=a, Key="private/x", Body=b"x")) == "AccessDenied"
    assert code(lambda: s3.get_object(Bucket=a, Key="private/secret.txt")) == "AccessDenied"
    # A root listing is filtered to what the user may see, and says so.
    response = s3.list_objects_v2(Bucket=a)
    assert sorted(o["Key"] for o in response["Contents"]) == [
        "team/new.txt",
        "team/one.txt",
        "team/sub/two.txt",
    ]
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-dg-list-filtered"] == "true"
    delimited = s3.list_objects_v2(Bucket=a, Delimiter="/")
    assert [p["Prefix"] for p in delimited.get("CommonPrefixes", [])] == ["team/"]
    assert "Contents" not in delimited  # top.txt is hidden
    # Listing inside the granted prefix is unrestricted.
    inside = s3.list_objects_v2(Bucket=a, Prefix="team/")
    assert "x-amz-meta-dg-list-filtered" not in inside["ResponseMetadata"]["HTTPHeaders"]
    s3.delete_object(Bucket=a, Key="team/new.txt")
    assert code(lambda: s3.delete_object(Bucket=a, Key="top.txt")) == "AccessDenied"
    # Batch delete re-checks every key.
    result = s3.delete_objects(
        Bucket=a, Delete={"Objects": [{"Key": "team/one.txt"}, {"Key": "private/secret.txt"}]}
    )
    assert [d["Key"] for d in result.get("Deleted", [])] == ["team/one.txt"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("private/secret.txt", "AccessDenied")]
    assert make_client(server.endpoint).head_object(Bucket=a, Key="private/secret.txt")


def test_deny_beats_allow(server: ProxyServer, admin: Admin, buckets: tuple[str, str]) -> None:
    a, _ = buckets
    user = admin.create_user(
        "nodelete", [allow(["*"], ["*"]), deny(["delete"], [f"{a}/*"]), deny(["read"], [f"{a}/private/*"])]
    )
    s3 = s3_for(server.endpoint, user)
    s3.put_object(Bucket=a, Key="team/x", Body=b"x")
    assert code(lambda: s3.delete_object(Bucket=a, Key="team/x")) == "AccessDenied"
    assert code(lambda: s3.get_object(Bucket=a, Key="private/secret.txt")) == "AccessDenied"
    assert s3.get_object(Bucket=a, Key="team/x")["Body"].read() == b"x"


def test_copy_needs_read_on_the_source(server: ProxyServer, admin: Admin, buckets: tuple[str, str]) -> None:
    a, b = buckets
    user = admin.create_user(
        "copier", [allow(["read", "write", "list"], [f"{a}/*"]), allow(["write"], [f"{b}/*"])]
    )
    s3 = s3_for(server.endpoint, user)
    s3.copy_object(Bucket=b, Key="copied", CopySource={"Bucket": a, "Key": "top.txt"})
    other = admin.create_user("writer-only", [allow(["write"], [f"{a}/*", f"{b}/*"])])
    w = s3_for(server.endpoint, other)
    assert (
        code(lambda: w.copy_object(Bucket=b, Key="c2", CopySource={"Bucket": a, "Key": "top.txt"}))
        == "AccessDenied"
    )


def test_source_ip_condition_via_trusted_forwarded_for(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    office = {"IpAddress": {"aws:SourceIp": ["203.0.113.0/24"]}}
    user = admin.create_user("office", [allow(["read", "list"], [f"{a}/*"], conditions=office)])
    inside = s3_for(server.endpoint, user, forwarded_for="203.0.113.9")
    outside = s3_for(server.endpoint, user, forwarded_for="198.51.100.1")
    assert inside.get_object(Bucket=a, Key="top.txt")["Body"].read()
    assert code(lambda: outside.get_object(Bucket=a, Key="top.txt")) == "AccessDenied"
    assert code(lambda: s3_for(server.endpoint, user).get_object(Bucket=a, Key="top.txt")) == "AccessDenied"


def test_dotfile_listing_denied_with_prefix_condition(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    rules = [allow(["*"], ["*"]), deny(["list"], [a], conditions={"StringLike": {"s3:prefix": ".*"}})]
    s3 = s3_for(server.endpoint, admin.create_user("nodots", rules))
    assert code(lambda: s3.list_objects_v2(Bucket=a, Prefix=".git/")) == "AccessDenied"
    assert keys(s3, a, "team/") == ["team/one.txt", "team/sub/two.txt"]


def test_group_inheritance_union_and_group_deny(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    user = admin.create_user("member", [allow(["read", "list"], [f"{a}/*"])])
    s3 = s3_for(server.endpoint, user)
    assert code(lambda: s3.get_object(Bucket=b, Key="top.txt")) == "AccessDenied"
    readers = admin.create_group("b-readers", [allow(["read", "list"], [f"{b}/*"])], [user["id"]])
    assert s3.get_object(Bucket=b, Key="top.txt")["Body"].read()
    assert sorted(x["Name"] for x in s3.list_buckets()["Buckets"]) == sorted([a, b])
    admin.create_group("no-private", [deny(["read"], [f"{a}/private/*"])], [user["id"]])
    assert code(lambda: s3.get_object(Bucket=a, Key="private/secret.txt")) == "AccessDenied"
    admin.ok("DELETE", f"/groups/{readers['id']}/members/{user['id']}", status=204)
    assert code(lambda: s3.get_object(Bucket=b, Key="top.txt")) == "AccessDenied"


def test_key_rotation_invalidates_the_old_secret(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    user = admin.create_user("rotating", [allow(["read", "list"], [f"{a}/*"])])
    old = s3_for(server.endpoint, user)
    assert old.get_object(Bucket=a, Key="top.txt")
    rotated = admin.ok("POST", f"/users/{user['id']}/rotate-keys")
    assert rotated["access_key_id"] != user["access_key_id"]
    assert rotated["secret_access_key"] != user["secret_access_key"]
    assert code(lambda: old.get_object(Bucket=a, Key="top.txt")) in ("InvalidAccessKeyId", "AccessDenied")
    assert s3_for(server.endpoint, rotated).get_object(Bucket=a, Key="top.txt")


def test_disabled_user_and_presigned_url(server: ProxyServer, admin: Admin, buckets: tuple[str, str]) -> None:
    a, _ = buckets
    user = admin.create_user("presigner", [allow(["read", "list"], [f"{a}/*"])])
    s3 = s3_for(server.endpoint, user)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": a, "Key": "top.txt"}, ExpiresIn=300)
    assert requests.get(url).status_code == 200
    admin.ok("PUT", f"/users/{user['id']}", {"enabled": False})
    response = requests.get(url)
    assert response.status_code == 403 and b"AccessDenied" in response.content
    assert code(lambda: s3.get_object(Bucket=a, Key="top.txt")) == "AccessDenied"


def test_multipart_needs_write(server: ProxyServer, admin: Admin, buckets: tuple[str, str]) -> None:
    a, _ = buckets
    reader = s3_for(server.endpoint, admin.create_user("mp-reader", [allow(["read", "list"], [f"{a}/*"])]))
    assert code(lambda: reader.create_multipart_upload(Bucket=a, Key="team/big")) == "AccessDenied"
    writer = s3_for(
        server.endpoint, admin.create_user("mp-writer", [allow(["read", "write"], [f"{a}/team/*"])])
    )
    upload = writer.create_multipart_upload(Bucket=a, Key="team/big")
    part = writer.upload_part(
        Bucket=a, Key="team/big", UploadId=upload["UploadId"], PartNumber=1, Body=b"z" * 10
    )
    writer.complete_multipart_upload(
        Bucket=a,
        Key="team/big",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert writer.get_object(Bucket=a, Key="team/big")["Body"].read() == b"z" * 10


def test_iam_db_on_disk_holds_no_plaintext(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    user = admin.create_user("plaintext-check", [allow(["read"], ["*"])])
    blob = (Path(server.data_dir).parent / "deltaglider_config.db").read_bytes()
    assert user["secret_access_key"].encode() not in blob
    assert b"plaintext-check" not in blob and b"SQLite" not in blob


def test_presigned_url_carries_the_signers_permissions(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    s3 = s3_for(server.endpoint, admin.create_user("presign-scope", [allow(["read"], [f"{a}/team/*"])]))
    inside = s3.generate_presigned_url(
        "get_object", Params={"Bucket": a, "Key": "team/one.txt"}, ExpiresIn=60
    )
    outside = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "top.txt"}, ExpiresIn=60)
    assert requests.get(inside).status_code == 200
    denied = requests.get(outside)
    assert denied.status_code == 403 and b"<Code>AccessDenied</Code>" in denied.content


def test_upload_part_copy_needs_read_on_the_source(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    s3 = s3_for(server.endpoint, admin.create_user("part-copier", [allow(["read", "write"], [f"{b}/*"])]))
    upload = s3.create_multipart_upload(Bucket=b, Key="assembled")
    with pytest.raises(ClientError) as info:
        s3.upload_part_copy(
            Bucket=b,
            Key="assembled",
            UploadId=upload["UploadId"],
            PartNumber=1,
            CopySource={"Bucket": a, "Key": "top.txt"},
        )
    assert info.value.response["Error"]["Code"] == "AccessDenied"


def test_bucket_admin_via_group_and_list_buckets_via_prefix_rules(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, b = buckets
    owner = admin.create_user("owner", [])
    admin.create_group("bucket-owners", [allow(["*"], ["own-*"])], [owner["id"]])
    s3 = s3_for(server.endpoint, owner)
    name = f"own-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="x", Body=b"1")
    s3.delete_object(Bucket=name, Key="x")
    s3.delete_bucket(Bucket=name)
    scoped = s3_for(server.endpoint, admin.create_user("prefix-only", [allow(["read"], [f"{b}/team/*"])]))
    assert [x["Name"] for x in scoped.list_buckets()["Buckets"]] == [b]
    everything = {x["Name"] for x in make_client(server.endpoint).list_buckets()["Buckets"]}
    assert {a, b} <= everything  # the legacy admin sees every bucket


def test_explicit_deny_inside_a_filtered_listing(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    rules = [allow(["read", "list"], [f"{a}/*"]), deny(["read", "list"], [f"{a}/private/*"])]
    s3 = s3_for(server.endpoint, admin.create_user("no-private", rules))
    response = s3.list_objects_v2(Bucket=a)
    assert sorted(o["Key"] for o in response["Contents"]) == ["team/one.txt", "team/sub/two.txt", "top.txt"]
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-dg-list-filtered"] == "true"
    delimited = s3.list_objects_v2(Bucket=a, Delimiter="/")
    assert [p["Prefix"] for p in delimited["CommonPrefixes"]] == ["team/"]


def test_no_cross_user_leakage_and_basic_auth_rejected(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    one = s3_for(server.endpoint, admin.create_user("one", [allow(["*"], [f"{a}/one/*"])]))
    two = s3_for(server.endpoint, admin.create_user("two", [allow(["*"], [f"{a}/two/*"])]))
    one.put_object(Bucket=a, Key="one/mine", Body=b"1")
    assert code(lambda: two.get_object(Bucket=a, Key="one/mine")) == "AccessDenied"
    assert keys(two, a) == []
    basic = requests.get(f"{server.endpoint}/{a}", auth=("user", "password"))
    assert basic.status_code in (400, 403)
    assert requests.get(f"{server.endpoint}/").status_code == 403  # ListBuckets needs auth


def test_multipart_upload_listing_is_filtered(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    a, _ = buckets
    root = make_client(server.endpoint)
    hidden = root.create_multipart_upload(Bucket=a, Key="private/upload")
    shown = root.create_multipart_upload(Bucket=a, Key="team/upload")
    s3 = s3_for(server.endpoint, admin.create_user("mp-lister", [allow(["read", "list"], [f"{a}/team/*"])]))
    try:
        listed = s3.list_multipart_uploads(Bucket=a)
        assert [u["Key"] for u in listed.get("Uploads", [])] == ["team/upload"]
        assert len(root.list_multipart_uploads(Bucket=a)["Uploads"]) == 2
    finally:
        for upload, key in ((hidden, "private/upload"), (shown, "team/upload")):
            root.abort_multipart_upload(Bucket=a, Key=key, UploadId=upload["UploadId"])


def test_iam_db_replaced_on_disk_is_reloaded(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    import shutil
    import time

    a, _ = buckets
    db = server.data_dir.parent / "deltaglider_config.db"
    user = admin.create_user("restored", [allow(["read"], [f"{a}/*"])])
    backup = db.with_name("backup.db")
    shutil.copy(db, backup)
    admin.ok("DELETE", f"/users/{user['id']}", status=204)
    s3 = s3_for(server.endpoint, user)
    assert code(lambda: s3.get_object(Bucket=a, Key="top.txt")) in ("InvalidAccessKeyId", "AccessDenied")
    version = admin.ok("GET", "/iam/version")["version"]
    backup.replace(db)  # a restore: the running proxy notices the new file and reloads it
    deadline = time.monotonic() + 10
    while admin.ok("GET", "/iam/version")["version"] == version and time.monotonic() < deadline:
        time.sleep(0.2)
    assert s3.get_object(Bucket=a, Key="top.txt")["Body"].read() == f"{a}/top.txt".encode()


def test_declarative_export_round_trips_as_a_noop(
    server: ProxyServer, admin: Admin, buckets: tuple[str, str]
) -> None:
    import yaml

    a, _ = buckets
    user = admin.create_user(
        "exported", [allow(["read"], [f"{a}/*"], conditions={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})]
    )
    admin.create_group("exported-group", [deny(["delete"], ["*"])], [user["id"]])
    response = admin.call("GET", "/config/declarative-iam-export")
    assert response.status_code == 200 and response.headers["content-type"] == "application/yaml"
    assert user["secret_access_key"] not in response.text
    access = yaml.safe_load(response.text)["access"]
    exported = next(u for u in access["iam_users"] if u["name"] == "exported")
    assert exported["groups"] == ["exported-group"] and exported["secret_access_key"] == ""
    preview = admin.ok("POST", "/config/declarative-iam-validate", access)
    assert preview["warnings"] == ["declarative IAM preview: no IAM changes (idempotent apply)"]
