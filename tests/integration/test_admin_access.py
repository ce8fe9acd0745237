"""Admin sessions, CSRF, password rotation, lockout and auth-mode transitions over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import make_client
from tests.support.admin import ADMIN_PASSWORD, Admin, allow, iam_proxy, s3_for
from tests.support.server import ProxyServer
from tests.support.signing import signed_headers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    proxy = iam_proxy(tmp_path_factory.mktemp("admin-access"))
    yield proxy
    proxy.stop()


def cookie_attributes(response: requests.Response) -> list[str]:
    return [part.strip() for part in response.headers["set-cookie"].split(";")]


def test_protected_routes_need_a_session(server: ProxyServer) -> None:
    response = requests.get(f"{server.endpoint}/_/api/admin/users")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert requests.get(f"{server.endpoint}/_/api/admin/session").json() == {"valid": False}
    whoami = requests.get(f"{server.endpoint}/_/api/whoami").json()
    assert whoami["mode"] in ("bootstrap", "iam") and "user" not in whoami


def test_login_cookie_flags_and_fixation(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    assert admin.login("wrong-password-123").json()["ok"] is False
    planted = "a" * 64
    admin.http.cookies.set("dgp_session", planted)
    assert admin.call("GET", "/users").status_code == 401  # a token we never minted is nothing
    response = admin.login()
    assert response.status_code == 200 and response.json() == {"ok": True}
    attributes = cookie_attributes(response)
    token = attributes[0].split("=", 1)[1]
    assert token != planted and len(token) == 64
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert "Secure" not in attributes
    assert any(a.startswith("Max-Age=") and int(a.split("=")[1]) > 0 for a in attributes)
    first = token
    assert admin.login().status_code == 200  # a second login mints a new token, the old one dies
    stale = requests.get(f"{server.endpoint}/_/api/admin/users", cookies={"dgp_session": first})
    assert stale.status_code == 401
    assert admin.call("GET", "/users").status_code == 200
    me = requests.get(f"{server.endpoint}/_/api/whoami", cookies=admin.http.cookies).json()
    assert me["user"] == {"name": "admin", "access_key_id": "bootstrap", "is_admin": True}


def test_secure_cookie_behind_trusted_https_proxy(server: ProxyServer) -> None:
    response = requests.post(
        f"{server.endpoint}/_/api/admin/login",
        json={"password": ADMIN_PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "Secure" in cookie_attributes(response)


def test_csrf_guard_on_cookie_mutations(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    admin.login()
    form = admin.http.post(admin.url("/users"), data="name=evil", headers={"Content-Type": "text/plain"})
    assert form.status_code == 403 and form.json()["error"] == "csrf_check_failed"
    cross = admin.http.post(
        admin.url("/users"), json={"name": "evil"}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and cross.json()["error"] == "csrf_check_failed"
    bare_logout = admin.http.post(admin.url("/logout"))
    assert bare_logout.status_code == 403
    assert all(u["name"] != "evil" for u in admin.ok("GET", "/users"))
    same_origin = admin.http.post(
        admin.url("/groups"), json={"name": "csrf-ok"}, headers={"Origin": server.endpoint}
    )
    assert same_origin.status_code == 201
    admin.ok("DELETE", f"/groups/{same_origin.json()['id']}", status=204)


def test_json_errors_name_the_problem(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    admin.login()
    bad = admin.call(
        "POST", "/users", {"name": "x", "permissions": [{"actions": ["fly"], "resources": ["*"]}]}
    )
    assert bad.status_code == 400 and "fly" in bad.json()["message"]
    reserved = admin.call("POST", "/users", {"name": "$bootstrap"})
    assert reserved.status_code == 400 and reserved.json()["error"] == "invalid_request"
    assert admin.call("PUT", "/users/999999", {"enabled": True}).status_code == 404
    first = admin.create_user("dup", [])
    again = admin.call("POST", "/users", {"name": "dup2", "access_key_id": first["access_key_id"]})
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    admin.ok("DELETE", f"/users/{first['id']}", status=204)


def test_login_as_admin_and_non_admin_sessions(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    admin.login()
    boss = admin.create_user("boss", [allow(["*"], ["*"])])
    clerk = admin.create_user("clerk", [allow(["read"], ["*"])])
    url = f"{server.endpoint}/_/api/admin/login-as"
    wrong = requests.post(
        url, json={"access_key_id": boss["access_key_id"], "secret_access_key": "nope-nope"}
    )
    assert wrong.status_code == 403
    assert (
        requests.post(url, json={k: clerk[k] for k in ("access_key_id", "secret_access_key")}).status_code
        == 403
    )
    as_boss = requests.Session()
    ok = as_boss.post(url, json={k: boss[k] for k in ("access_key_id", "secret_access_key")})
    assert ok.status_code == 200
    assert as_boss.get(admin.url("/users")).status_code == 200
    me = as_boss.get(f"{server.endpoint}/_/api/whoami").json()
    assert me["user"]["name"] == "boss" and me["user"]["is_admin"] is True
    # Admin-ness is re-evaluated per request: demoted, the same session gets 403; disabled, 401.
    admin.ok("PUT", f"/users/{boss['id']}", {"permissions": [allow(["read"], ["*"])]})
    demoted = as_boss.get(admin.url("/users"))
    assert demoted.status_code == 403 and demoted.json()["error"] == "admin_session_required"
    admin.ok("PUT", f"/users/{boss['id']}", {"enabled": False})
    assert as_boss.get(admin.url("/users")).status_code == 401
    for user in (boss, clerk):
        admin.ok("DELETE", f"/users/{user['id']}", status=204)


def test_audit_records_logins_and_mutations(server: ProxyServer) -> None:
    # Self-contained: under xdist the module's other tests may run on another worker's server.
    admin = Admin(server.endpoint)
    assert admin.call("GET", "/audit").status_code == 401  # the ring is for admins only
    assert admin.login("not-the-password-1").json()["ok"] is False
    assert admin.login().status_code == 200
    user = admin.create_user("audited", [allow(["read"], ["*"])])
    admin.ok("DELETE", f"/users/{user['id']}", status=204)
    entries = admin.ok("GET", "/audit?limit=10")["entries"]
    seen = [(e["action"], e["user"], e["target"]) for e in entries]
    assert ("create_user", "bootstrap", "audited") in seen
    assert ("delete_user", "bootstrap", str(user["id"])) in seen
    assert any(action == "login_success" and who == "bootstrap" for action, who, _ in seen)
    assert any(action == "login_failed" for action, _, _ in seen)
    assert seen.index(("create_user", "bootstrap", "audited")) > seen.index(
        ("delete_user", "bootstrap", str(user["id"]))
    )  # newest first
    log = server.log()
    assert "action=create_user | user=bootstrap | target=audited" in log
    assert "action=login_failed" in log
    assert ADMIN_PASSWORD not in log


def test_openapi_document(server: ProxyServer) -> None:
    doc = requests.get(f"{server.endpoint}/_/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/_/api/admin/login", "/_/api/admin/users/{id}", "/_/api/whoami"} <= set(doc["paths"])


def test_password_rotation(tmp_path: Path) -> None:
    proxy = iam_proxy(tmp_path / "pw")
    try:
        admin = Admin(proxy.endpoint)
        admin.login()
        wrong = admin.call("PUT", "/password", {"current_password": "nope", "new_password": "x" * 20})
        assert wrong.status_code == 403 and wrong.json()["message"] == "Current password is incorrect"
        weak = admin.call(
            "PUT", "/password", {"current_password": ADMIN_PASSWORD, "new_password": "password1234"}
        )
        assert weak.status_code == 400 and weak.json()["message"] == "Password is too common"
        new = "a-much-better-passphrase"
        done = admin.ok("PUT", "/password", {"current_password": ADMIN_PASSWORD, "new_password": new})
        assert done["ok"] is True and "DGP_BOOTSTRAP_PASSWORD" in done["warnings"][0]
        assert Admin(proxy.endpoint).login(ADMIN_PASSWORD).status_code == 401
        assert Admin(proxy.endpoint).login(new).status_code == 200
        stored = (proxy.data_dir.parent / ".deltaglider_bootstrap_hash").read_text()
        assert stored.startswith("$argon2id$") and new not in stored
        assert "action=change_password | user=bootstrap" in proxy.log()
    finally:
        proxy.stop()


def test_lockout_after_failures_and_release_after_window(tmp_path: Path) -> None:
    proxy = iam_proxy(
        tmp_path / "lock",
        DGP_RATE_LIMIT_MAX_ATTEMPTS="3",
        DGP_RATE_LIMIT_WINDOW_SECS="60",
        DGP_RATE_LIMIT_LOCKOUT_SECS="2",
    )
    try:
        url = f"{proxy.endpoint}/_/api/admin/login"
        attacker = {"X-Forwarded-For": "198.51.100.66"}
        statuses = [
            requests.post(url, json={"password": "guess-guess-1"}, headers=attacker).status_code
            for _ in range(3)
        ]
        assert statuses == [401, 401, 401]
        locked = requests.post(url, json={"password": ADMIN_PASSWORD}, headers=attacker)
        assert locked.status_code == 429 and locked.json()["ok"] is False
        # Another client address is not affected.
        other = requests.post(
            url, json={"password": ADMIN_PASSWORD}, headers={"X-Forwarded-For": "198.51.100.7"}
        )
        assert other.status_code == 200
        time.sleep(2.2)
        assert requests.post(url, json={"password": ADMIN_PASSWORD}, headers=attacker).status_code == 200
        # SigV4 failures are limited separately and answered with S3's SlowDown.
        bad = {"access_key_id": "AKNOBODY00000000000", "secret_access_key": "x" * 40}
        s3 = s3_for(proxy.endpoint, bad, forwarded_for="198.51.100.99")
        codes = []
        for _ in range(4):
            with pytest.raises(ClientError) as info:
                s3.list_buckets()
            codes.append(
                (
                    info.value.response["ResponseMetadata"]["HTTPStatusCode"],
                    info.value.response["Error"]["Code"],
                )
            )
        assert codes[-1] == (503, "SlowDown")
        assert all(status in (403, 503) for status, _ in codes)
        assert "event=brute_force_lockout" in proxy.log()
        assert "action=login_failed | user= | target=invalid_access_key | ip=198.51.100.99" in proxy.log()
        metrics = requests.get(f"{proxy.endpoint}/_/metrics").text
        lockouts = "deltaglider_rate_limit_lockouts_total"
        assert _sample(metrics, lockouts, '{surface="admin_login"}') == 1
        assert _sample(metrics, lockouts, '{surface="s3"}') == 1
    finally:
        proxy.stop()


def test_deleting_the_last_user_falls_back_to_the_bootstrap_pair_not_open(tmp_path: Path) -> None:
    proxy = iam_proxy(tmp_path / "last")
    try:
        admin = Admin(proxy.endpoint)
        admin.login()
        alice = admin.create_user("alice", [allow(["*"], ["*"])])
        users = admin.ok("GET", "/users")
        legacy = next(u for u in users if u["name"] == "legacy-admin")
        admin.ok("DELETE", f"/users/{legacy['id']}", status=204)
        refused = admin.call("DELETE", f"/users/{alice['id']}", headers={"X-Requested-With": "t"})
        assert refused.status_code == 409 and refused.json()["error"] == "last_admin"
        admin.ok("DELETE", f"/users/{alice['id']}?force=true", status=204)
        assert requests.get(f"{proxy.endpoint}/_/api/whoami").json()["mode"] == "bootstrap"
        assert requests.get(f"{proxy.endpoint}/").status_code == 403  # still closed to anonymous callers
        assert make_client(proxy.endpoint).list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
        with pytest.raises(ClientError):
            s3_for(proxy.endpoint, alice).list_buckets()
    finally:
        proxy.stop()


def test_open_mode_becomes_iam_and_back_to_open(tmp_path: Path) -> None:
    proxy = iam_proxy(
        tmp_path / "open", DGP_AUTHENTICATION="none", DGP_ACCESS_KEY_ID="", DGP_SECRET_ACCESS_KEY=""
    )
    try:
        whoami = f"{proxy.endpoint}/_/api/whoami"
        assert requests.get(whoami).json()["mode"] == "open"
        assert requests.get(f"{proxy.endpoint}/").status_code == 200
        admin = Admin(proxy.endpoint)
        admin.login()
        user = admin.create_user("solo", [allow(["*"], ["*"])])
        assert [u["name"] for u in admin.ok("GET", "/users")] == ["solo"]  # no pair to migrate
        assert requests.get(whoami).json()["mode"] == "iam"
        assert requests.get(f"{proxy.endpoint}/").status_code == 403
        assert s3_for(proxy.endpoint, user).list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
        admin.ok("DELETE", f"/users/{user['id']}?force=true", status=204)
        assert requests.get(whoami).json()["mode"] == "open"  # authentication: none was chosen explicitly
    finally:
        proxy.stop()


def test_iam_state_survives_restart_and_needs_the_key(tmp_path: Path) -> None:
    root = tmp_path / "restart"
    proxy = iam_proxy(root)
    admin = Admin(proxy.endpoint)
    admin.login()
    user = admin.create_user("persistent", [allow(["*"], ["*"])])
    proxy.stop()
    proxy.start()
    try:
        assert s3_for(proxy.endpoint, user).list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        proxy.stop()
    wrong_key = ProxyServer(data_dir=root / "data", env={**proxy.env, "DGP_CONFIG_DB_KEY": "7a" * 32})
    with pytest.raises(RuntimeError, match="cannot be decrypted"):
        wrong_key.start(timeout=20)


def test_session_is_bound_to_the_client_ip_behind_a_trusted_proxy(server: ProxyServer) -> None:
    http = requests.Session()
    here = {"X-Forwarded-For": "192.0.2.10"}
    assert http.post(
        f"{server.endpoint}/_/api/admin/login", json={"password": ADMIN_PASSWORD}, headers=here
    ).ok
    assert http.get(f"{server.endpoint}/_/api/admin/users", headers=here).status_code == 200
    elsewhere = http.get(f"{server.endpoint}/_/api/admin/users", headers={"X-Forwarded-For": "192.0.2.11"})
    assert elsewhere.status_code == 401


def test_stats_need_an_admin_principal(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    admin.login()
    reader = admin.create_user("stats-reader", [allow(["read", "list"], ["*"])])
    try:
        url = f"{server.endpoint}/_/stats"
        assert requests.get(url, headers=signed_headers("GET", url)).status_code == 200  # legacy-admin
        as_reader = signed_headers(
            "GET", url, access_key=reader["access_key_id"], secret_key=reader["secret_access_key"]
        )
        assert requests.get(url, headers=as_reader).status_code == 403
    finally:
        admin.ok("DELETE", f"/users/{reader['id']}", status=204)


def test_set_bootstrap_password_cli_then_login(tmp_path: Path) -> None:
    import base64
    import subprocess

    from tests.support.server import PROXY_BIN

    root = tmp_path / "cli"
    root.mkdir()
    weak = subprocess.run(
        [str(PROXY_BIN), "--set-bootstrap-password"],
        input="short\n",
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert weak.returncode == 2 and "at least 12 characters" in weak.stderr
    done = subprocess.run(
        [str(PROXY_BIN), "--set-bootstrap-password"],
        input="set-from-the-cli-123\n",
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("DGP_BOOTSTRAP_PASSWORD_HASH=")
    assert base64.b64decode(line.split("=", 1)[1]).decode().startswith("$argon2id$")
    proxy = ProxyServer(data_dir=root / "data", env={"DGP_CONFIG_DB_KEY": "5f" * 32})
    proxy.start()
    try:
        assert Admin(proxy.endpoint).login("set-from-the-cli-123").status_code == 200
        assert Admin(proxy.endpoint).login(ADMIN_PASSWORD).status_code == 401
    finally:
        proxy.stop()


def test_login_as_gives_no_key_oracle(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    admin.login()
    user = admin.create_user("oracle", [allow(["*"], ["*"])])
    try:
        url = f"{server.endpoint}/_/api/admin/login-as"
        unknown = requests.post(
            url, json={"access_key_id": "AKNOSUCHKEY00000000", "secret_access_key": "x" * 40}
        )
        wrong = requests.post(
            url, json={"access_key_id": user["access_key_id"], "secret_access_key": "x" * 40}
        )
        assert unknown.status_code == wrong.status_code == 403
        assert unknown.json() == wrong.json()  # an unknown key and a wrong secret look the same
    finally:
        admin.ok("DELETE", f"/users/{user['id']}", status=204)


def _sample(metrics_text: str, name: str, labels: str = "") -> float:
    line = next(line for line in metrics_text.splitlines() if line.startswith(f"{name}{labels} "))
    return float(line.split()[-1])


def test_logins_sessions_and_users_reach_metrics_and_readiness(server: ProxyServer) -> None:
    def scrape() -> str:
        return requests.get(f"{server.endpoint}/_/metrics").text

    before = scrape()
    failed = '{method="bootstrap",result="failure"}'
    succeeded = '{method="bootstrap",result="success"}'
    admin = Admin(server.endpoint)
    assert admin.login("not-the-password-2").json()["ok"] is False
    assert admin.login().status_code == 200
    user = admin.create_user("counted", [allow(["read"], ["*"])])
    after = scrape()
    logins = "deltaglider_admin_logins_total"
    assert _sample(after, logins, failed) == _sample(before, logins, failed) + 1
    assert _sample(after, logins, succeeded) == _sample(before, logins, succeeded) + 1
    assert _sample(after, "deltaglider_admin_sessions") >= 1
    users = len(admin.ok("GET", "/users"))
    assert _sample(after, "deltaglider_iam_users") == users
    ready = requests.get(f"{server.endpoint}/_/ready")
    assert ready.status_code == 200 and ready.json()["config_db"] == "ready"
    admin.ok("DELETE", f"/users/{user['id']}", status=204)
    assert _sample(scrape(), "deltaglider_iam_users") == users - 1


def test_every_iam_mutation_and_denial_is_audited(server: ProxyServer) -> None:
    admin = Admin(server.endpoint)
    assert admin.login().status_code == 200
    user = admin.create_user("auditee", [allow(["read", "list"], ["audit-bucket/*"])])
    admin.ok("PUT", f"/users/{user['id']}", {"permissions": [allow(["read", "list"], ["audit-bucket/*"])]})
    rotated = admin.ok("POST", f"/users/{user['id']}/rotate-keys", {})
    group = admin.create_group("auditors", [allow(["list"], ["audit-bucket/*"])], [])
    admin.ok("PUT", f"/groups/{group['id']}", {"description": "reads the audit bucket"})
    admin.ok("POST", f"/groups/{group['id']}/members", {"user_id": user["id"]})
    admin.call("DELETE", f"/groups/{group['id']}/members/{user['id']}")
    with pytest.raises(ClientError):
        s3_for(server.endpoint, rotated).put_object(Bucket="audit-bucket", Key="nope.txt", Body=b"x")
    assert admin.call("POST", "/logout").status_code in (200, 204)
    assert admin.login().status_code == 200
    entries = admin.ok("GET", "/audit?limit=50")["entries"]
    seen = {(e["action"], e["user"], e["target"]) for e in entries}
    membership = f"group:{group['id']}+user:{user['id']}"
    for expected in (
        ("update_user", "bootstrap", "auditee"),
        ("rotate_keys", "bootstrap", "auditee"),
        ("update_group", "bootstrap", "auditors"),
        ("add_member", "bootstrap", membership),
        ("remove_member", "bootstrap", membership),
        ("access_denied", "auditee", "Write"),
    ):
        assert expected in seen, (expected, seen)
    denied = next(e for e in entries if e["action"] == "access_denied")
    assert (denied["bucket"], denied["path"]) == ("audit-bucket", "nope.txt")
    assert any(action == "logout" and who == "bootstrap" for action, who, _ in seen)
    admin.ok("DELETE", f"/groups/{group['id']}", status=204)
    admin.ok("DELETE", f"/users/{user['id']}", status=204)
