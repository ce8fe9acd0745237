"""Assertions shared by the HTTP-level tests."""

from __future__ import annotations

import requests


def assert_error(response: requests.Response, status: int, code: str) -> None:
    """An S3 error answer: the status, an XML body with the code, and a RequestId that matches the
    ``x-amz-request-id`` header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/xml"
    assert f"<Code>{code}</Code>" in response.text, response.text
    request_id = response.headers["x-amz-request-id"]
    assert f"<RequestId>{request_id}</RequestId>" in response.text
