"""The XML of S3's answers and requests: listings, multipart uploads, errors."""

from __future__ import annotations

from xml.etree import ElementTree

from kraken.backends.base import BackendError


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ElementTree.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def parse_xml(body: bytes) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise BackendError(f"S3 answered with malformed XML: {e}") from None


def parse_list(body: bytes) -> tuple[list[str], str | None]:
    """The keys of a ``ListBucketResult`` (ListObjectsV2) and its next
    continuation token (None when the listing is complete)."""
    root = parse_xml(body)
    if _local(root.tag) != "ListBucketResult":
        raise BackendError(f"expected ListBucketResult, got {_local(root.tag)}")
    keys = []
    for element in root:
        if _local(element.tag) == "Contents":
            key = _child_text(element, "Key")
            if key is not None:
                keys.append(key)
    truncated = (_child_text(root, "IsTruncated") or "false").strip().lower() == "true"
    token = _child_text(root, "NextContinuationToken")
    if truncated and not token:
        raise BackendError("a truncated listing without NextContinuationToken")
    return keys, token if truncated else None


def parse_upload_id(body: bytes) -> str:
    root = parse_xml(body)
    upload_id = _child_text(root, "UploadId") if _local(root.tag) == "InitiateMultipartUploadResult" else None
    if not upload_id:
        raise BackendError("CreateMultipartUpload answered without an UploadId")
    return upload_id


def complete_multipart_xml(etags: list[str]) -> bytes:
    """The ``CompleteMultipartUpload`` body for parts 1..n with these ETags."""
    root = ElementTree.Element("CompleteMultipartUpload", xmlns="http://s3.amazonaws.com/doc/2006-03-01/")
    for number, etag in enumerate(etags, 1):
        part = ElementTree.SubElement(root, "Part")
        ElementTree.SubElement(part, "PartNumber").text = str(number)
        ElementTree.SubElement(part, "ETag").text = etag
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def error_code(body: bytes) -> str:
    """S3's name for the error of an ``<Error>`` body (``NoSuchKey``, ``SlowDown``); empty for any other body."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    return (_child_text(root, "Code") or "") if _local(root.tag) == "Error" else ""
