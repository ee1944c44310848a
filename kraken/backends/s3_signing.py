"""SigV4 signing of S3 requests: botocore only computes the headers, treq sends them.

botocore's ``S3SigV4Auth`` is the signer boto3 uses for S3: it signs the path as sent, without re-normalising
it. Bodies of files are streamed and signed as ``UNSIGNED-PAYLOAD``, so nothing large is hashed; small XML
bodies are signed with their SHA-256.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotocoreConfig
from botocore.credentials import Credentials

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# botocore's S3 signer hashes the body unless told not to; streamed bodies are never given to it.
_UNSIGNED = BotocoreConfig(s3={"payload_signing_enabled": False})


def sign(
    method: str,
    url: str,
    *,
    credentials: Credentials | None,
    region: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> dict[bytes, list[bytes]]:
    """The request's headers, SigV4-signed by botocore, ready for treq.

    ``body`` None means the body is streamed (or empty for GET/HEAD/DELETE
    and signed as such when ``headers`` say nothing): streamed bodies are
    signed as ``UNSIGNED-PAYLOAD``; pass ``headers={"x-amz-content-sha256":
    UNSIGNED_PAYLOAD}`` for them. ``url`` must be percent-encoded already
    (``object_url``): it is signed and sent as is. Without credentials the
    headers are returned unsigned.
    """
    all_headers = dict(headers or {})
    if credentials is None:
        return {k.encode("ascii"): [v.encode("ascii")] for k, v in all_headers.items()}
    unsigned = all_headers.pop("x-amz-content-sha256", None) == UNSIGNED_PAYLOAD
    request = AWSRequest(method=method, url=url, data=body, headers=all_headers)
    if unsigned:
        request.context["client_config"] = _UNSIGNED
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return {k.encode("ascii"): [v.encode("ascii")] for k, v in request.headers.items()}


def quote_key(key: str) -> str:
    return quote(key, safe="/~")


def query(params: dict[str, str]) -> str:
    """A query string encoded as SigV4 requires (RFC 3986, ``%20``, sorted)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
