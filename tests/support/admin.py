"""A small admin-API client over real HTTP (requests), and a proxy started with an IAM database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.support.server import ProxyServer

ADMIN_PASSWORD = "correct-horse-battery-staple"
DB_KEY = "5f" * 32


def iam_proxy(root: Path, **env: str) -> ProxyServer:
    """A proxy with an IAM database, a known bootstrap password and trusted X-Forwarded-For."""
    root.mkdir(parents=True, exist_ok=True)
    server = ProxyServer(
        data_dir=root / "data",
        env={
            "DGP_CONFIG_DB_KEY": DB_KEY,
            "DGP_BOOTSTRAP_PASSWORD": ADMIN_PASSWORD,
            "DGP_TRUST_PROXY_HEADERS": "true",
            **env,
        },
    )
    return server.start()


class Admin:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.http = requests.Session()

    def url(self, path: str) -> str:
        return f"{self.endpoint}/_/api/admin{path}"

    def login(self, password: str = ADMIN_PASSWORD) -> requests.Response:
        return self.http.post(self.url("/login"), json={"password": password})

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        else:
            kwargs.setdefault("headers", {})["X-Requested-With"] = "test"
        return self.http.request(method, self.url(path), **kwargs)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.call(method, path, body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def create_user(self, name: str, permissions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        user: dict[str, Any] = self.ok(
            "POST", "/users", {"name": name, "permissions": permissions, **extra}, 201
        )
        return user

    def create_group(
        self, name: str, permissions: list[dict[str, Any]], members: list[int]
    ) -> dict[str, Any]:
        body = {"name": name, "permissions": permissions, "member_ids": members}
        group: dict[str, Any] = self.ok("POST", "/groups", body, 201)
        return group

    def delete_all_users(self) -> None:
        for user in self.ok("GET", "/users"):
            self.ok("DELETE", f"/users/{user['id']}?force=true", status=204)

    def delete_all_groups(self) -> None:
        for group in self.ok("GET", "/groups"):
            self.ok("DELETE", f"/groups/{group['id']}", status=204)


def s3_for(endpoint: str, user: dict[str, Any], *, forwarded_for: str | None = None) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=user["access_key_id"],
        aws_secret_access_key=user["secret_access_key"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, signature_version="s3v4"),
    )
    if forwarded_for is not None:

        def add_header(request: Any, **_: Any) -> None:
            request.headers["X-Forwarded-For"] = forwarded_for

        client.meta.events.register("before-sign.s3.*", add_header)
    return client


def allow(actions: list[str], resources: list[str], **extra: Any) -> dict[str, Any]:
    return {"effect": "Allow", "actions": actions, "resources": resources, **extra}


def deny(actions: list[str], resources: list[str], **extra: Any) -> dict[str, Any]:
    return {"effect": "Deny", "actions": actions, "resources": resources, **extra}
