"""Safe parsing of S3 request XML and rendering of response XML."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from deltaglider_proxy.s3api import errors

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_XML_BODY = 2 * 1024 * 1024
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def parse(body: bytes) -> Element:
    """Parse a request document; anything malformed, hostile or non-UTF-8 is MalformedXML."""
    if len(body) > MAX_XML_BODY:
        raise errors.MalformedXML("The XML you provided was too large.")
    try:
        body.decode("utf-8")
        root: Element = SafeElementTree.fromstring(body, forbid_dtd=True)
    except (SafeElementTree.ParseError, DefusedXmlException, UnicodeDecodeError, ValueError):
        raise errors.MalformedXML() from None
    return root


def local(tag: str) -> str:
    """Tag name without its namespace (clients send S3 XML with or without xmlns)."""
    return tag.rsplit("}", 1)[-1]


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def child_text(element: Element, name: str) -> str | None:
    for child in element:
        if local(child.tag) == name:
            return child.text or ""
    return None


def esc(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\r", "&#13;")
    )


def el(name: str, value: str | int | bool | None) -> str:
    if value is None:
        return ""
    text = ("true" if value else "false") if isinstance(value, bool) else esc(str(value))
    return f"<{name}>{text}</{name}>"


def raw(name: str, inner: Iterable[str] | str) -> str:
    body = inner if isinstance(inner, str) else "".join(inner)
    return f"<{name}>{body}</{name}>"


def document(root: str, inner: Iterable[str] | str) -> bytes:
    body = inner if isinstance(inner, str) else "".join(inner)
    return f'{XML_DECLARATION}<{root} xmlns="{S3_NS}">{body}</{root}>'.encode()


def iso8601(value: datetime) -> str:
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
