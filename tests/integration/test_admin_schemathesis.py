"""schemathesis against /_/api/openapi.json with an admin session: no input makes the API fail 5xx.

Login, login-as and password are left out: every wrong guess there feeds the brute-force
limiter, whose progressive delay (by design) would make the run take minutes; logout would end
the session the rest of the run needs. Those endpoints have their own tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.admin import Admin, iam_proxy

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_no_server_errors_for_generated_requests(tmp_path: Path) -> None:
    proxy = iam_proxy(tmp_path / "fuzz")
    try:
        admin = Admin(proxy.endpoint)
        assert admin.login().status_code == 200
        token = admin.http.cookies["dgp_session"]
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{proxy.endpoint}/_/api/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--header",
                f"Cookie: dgp_session={token}",
                "--header",
                "X-Requested-With: schemathesis",
                "--request-timeout",
                "20",
                "--exclude-path-regex",
                "/(login|login-as|logout|password)$",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "/_/api/admin/users" in result.stdout  # the run did reach the IAM endpoints
        assert "admin API " not in proxy.log()  # no handler raised an unexpected exception
    finally:
        proxy.stop()
