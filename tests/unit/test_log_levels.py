"""``DGP_LOG_LEVEL`` / ``RUST_LOG`` filter syntax (control-plane.md §10.3) onto Python loggers."""

from __future__ import annotations

import logging

import pytest

from deltaglider_proxy.observability.logs import parse_levels
from deltaglider_proxy.observability.metrics import method_label, operation_label


@pytest.mark.parametrize(
    ("spec", "default", "modules"),
    [
        ("info", logging.INFO, {}),
        ("", logging.INFO, {}),
        ("WARN", logging.WARNING, {}),
        ("trace", logging.DEBUG, {}),
        ("off", logging.CRITICAL + 10, {}),
        (
            "deltaglider_proxy=debug,tower_http=debug",  # upstream's default string
            logging.INFO,
            {"deltaglider_proxy": logging.DEBUG, "tower_http": logging.DEBUG},
        ),
        (
            "error, deltaglider_proxy::s3api = trace",
            logging.ERROR,
            {"deltaglider_proxy.s3api": logging.DEBUG},
        ),
    ],
)
def test_filters_parse(spec: str, default: int, modules: dict[str, int]) -> None:
    assert parse_levels(spec) == (default, modules)


@pytest.mark.parametrize("spec", ["chatty", "deltaglider_proxy=loud", "info,=verbose"])
def test_unknown_levels_are_rejected_by_name(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        parse_levels(spec)


@pytest.mark.parametrize(
    ("method", "bucket", "key", "operation"),
    [
        ("GET", None, None, "list_buckets"),
        ("HEAD", None, None, "head_root"),
        ("POST", None, None, "unknown"),
        ("GET", "b", None, "list_objects"),
        ("PUT", "b", None, "create_bucket"),
        ("DELETE", "b", None, "delete_bucket"),
        ("HEAD", "b", None, "head_bucket"),
        ("POST", "b", None, "post_bucket"),
        ("GET", "health", None, "health"),
        ("GET", "stats", None, "stats"),
        ("GET", "metrics", None, "metrics"),
        ("GET", "b", "k", "get_object"),
        ("PUT", "b", "k", "put_object"),
        ("DELETE", "b", "k", "delete_object"),
        ("HEAD", "b", "k", "head_object"),
        ("POST", "b", "k", "post_object"),
        ("OPTIONS", "b", "k", "unknown"),
    ],
)
def test_operation_labels_follow_the_request_shape(
    method: str, bucket: str | None, key: str | None, operation: str
) -> None:
    assert operation_label(method, bucket, key) == operation


def test_non_standard_methods_collapse_to_other() -> None:
    assert method_label("PROPFIND") == "OTHER"
    assert method_label("GET") == "GET"
