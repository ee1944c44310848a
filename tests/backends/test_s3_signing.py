"""The S3 signer against the worked examples of the AWS S3 SigV4 documentation, and boto3's own signer."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from botocore.credentials import Credentials

from kraken.backends.s3_signing import UNSIGNED_PAYLOAD, sign


@pytest.fixture
def frozen_2013(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.auth

    when = datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)


EXAMPLE_CREDENTIALS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")


def test_signature_of_get_object_matches_the_aws_example(frozen_2013: None) -> None:
    # AWS S3 API reference, "Signature Calculations for the Authorization Header", example GET Object.
    headers = sign(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        credentials=EXAMPLE_CREDENTIALS,
        region="us-east-1",
        headers={"range": "bytes=0-9"},
    )
    assert headers[b"X-Amz-Date"] == [b"20130524T000000Z"]
    assert headers[b"X-Amz-Content-SHA256"] == [hashlib.sha256(b"").hexdigest().encode()]
    assert headers[b"Authorization"] == [
        b"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        b"SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        b"Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    ]


def test_signature_of_list_matches_the_aws_example(frozen_2013: None) -> None:
    # The same page, example GET Bucket (List Objects).
    headers = sign(
        "GET",
        "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
        credentials=EXAMPLE_CREDENTIALS,
        region="us-east-1",
    )
    assert headers[b"Authorization"][0].endswith(
        b"Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


def test_streamed_bodies_are_signed_unsigned_payload(frozen_2013: None) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config

    url = "http://127.0.0.1:9000/bucket/docker/registry/v2/blobs/sha256/ab/abcd/data?partNumber=1&uploadId=x%2By"
    ours = sign(
        "PUT", url, credentials=EXAMPLE_CREDENTIALS, region="eu-west-1",
        headers={"x-amz-content-sha256": UNSIGNED_PAYLOAD},
    )  # fmt: skip
    assert ours[b"X-Amz-Content-SHA256"] == [b"UNSIGNED-PAYLOAD"]
    # What boto3 sends for the same request with payload signing off.
    request = AWSRequest(method="PUT", url=url, data=b"never hashed")
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(EXAMPLE_CREDENTIALS, "s3", "eu-west-1").add_auth(request)
    assert ours[b"Authorization"] == [request.headers["Authorization"].encode()]


def test_session_token_is_sent_and_signed(frozen_2013: None) -> None:
    creds = Credentials("AKID", "SECRET", "TOKEN")
    headers = sign("HEAD", "https://b.s3.amazonaws.com/k", credentials=creds, region="us-east-1")
    assert headers[b"X-Amz-Security-Token"] == [b"TOKEN"]
    assert b"x-amz-security-token" in headers[b"Authorization"][0]


def test_anonymous_requests_are_not_signed() -> None:
    assert sign("GET", "http://h/b/k", credentials=None, region="us-east-1") == {}
