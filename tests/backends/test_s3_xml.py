"""The XML of S3's listings and multipart uploads."""

from __future__ import annotations

import pytest

from kraken.backends.base import BackendError
from kraken.backends.s3_xml import complete_multipart_xml, error_code, parse_list, parse_upload_id


def test_parse_list() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name><Prefix>r/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
        b"<IsTruncated>true</IsTruncated><NextContinuationToken>tok+/=</NextContinuationToken>"
        b"<Contents><Key>r/a</Key><Size>1</Size></Contents><Contents><Key>r/b &amp; c</Key></Contents>"
        b"</ListBucketResult>"
    )
    assert parse_list(body) == (["r/a", "r/b & c"], "tok+/=")
    last = body.replace(b"<IsTruncated>true", b"<IsTruncated>false")
    assert parse_list(last) == (["r/a", "r/b & c"], None)
    with pytest.raises(BackendError):
        parse_list(b"<Error><Code>AccessDenied</Code></Error>")


def test_complete_multipart_xml() -> None:
    body = complete_multipart_xml(['"e1"', '"e2"'])
    assert b'<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag></Part>' in body
    assert b"<Part><PartNumber>2</PartNumber>" in body


def test_parse_upload_id_and_error_code() -> None:
    ns = b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    answer = b"<InitiateMultipartUploadResult" + ns + b"><UploadId>u-1</UploadId></InitiateMultipartUploadResult>"
    assert parse_upload_id(answer) == "u-1"
    with pytest.raises(BackendError):
        parse_upload_id(b"<InitiateMultipartUploadResult/>")
    assert error_code(b"<Error><Code>SlowDown</Code></Error>") == "SlowDown"
    assert error_code(b"<CompleteMultipartUploadResult/>") == error_code(b"not xml") == ""
