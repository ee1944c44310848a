"""Blob uploads through the HTTP API (``kraken.registry.http_uploads``)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from kraken.core import Digest

from .conftest import Registry, chunked_request, parse_wire

DATA = bytes(range(256)) * 40  # 10 KiB


def uid_of(location: str) -> str:
    return location.rsplit("/", 1)[1]


def upload_files(reg: Registry) -> list[str]:
    assert reg.uploads is not None
    return os.listdir(reg.uploads._root)


def commits(reg: Registry) -> list[tuple[object, ...]]:
    return [args for name, args in reg.source.calls if name == "commit_blob"]


def chunked(reg: Registry, method: str, path: str, data: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return parse_wire(
        reg.raw(chunked_request(method, path, data, {k.replace("_", "-"): v for k, v in headers.items()}))
    )


# -- starting uploads -------------------------------------------------------------


def test_post_starts_upload(registry: Registry) -> None:
    r = registry.request("POST", "/v2/library/ubuntu/blobs/uploads/")
    assert r.code == 202
    location = r.header("Location")
    assert location is not None and location.startswith("/v2/library/ubuntu/blobs/uploads/")
    assert r.header("Docker-Upload-UUID") == uid_of(location)
    assert r.header("Range") == "0-0"
    assert r.body == b""
    assert upload_files(registry) == [uid_of(location)]


def test_post_wire_headers(registry: Registry) -> None:
    wire = registry.raw(b"POST /v2/a/b/blobs/uploads/ HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\n\r\n")
    head = wire.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 202 Accepted"
    assert b"Content-Length: 0" in head
    assert b"Range: 0-0" in head
    assert b"Docker-Distribution-Api-Version: registry/2.0" in head


def test_post_without_trailing_slash(registry: Registry) -> None:
    r = registry.request("POST", "/v2/a/blobs/uploads")
    assert r.code == 202


def test_monolithic_post(registry: Registry) -> None:
    d = Digest.from_bytes(DATA)
    r = registry.request("POST", f"/v2/a/b/blobs/uploads/?digest={d}", body=DATA)
    assert r.code == 201
    assert r.header("Location") == f"/v2/a/b/blobs/{d}"
    assert r.header("Docker-Content-Digest") == str(d)
    assert registry.source.blobs[d] == DATA
    assert upload_files(registry) == []
    assert registry.get(f"/v2/a/b/blobs/{d}").body == DATA


def test_monolithic_post_wrong_digest(registry: Registry) -> None:
    d = Digest.from_bytes(b"something else")
    r = registry.request("POST", f"/v2/a/blobs/uploads/?digest={d}", body=DATA)
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
    assert registry.source.blobs == {}
    assert commits(registry) == []
    assert upload_files(registry) == []
    assert len(registry.api.sessions) == 0


def test_monolithic_post_malformed_digest(registry: Registry) -> None:
    r = registry.request("POST", "/v2/a/blobs/uploads/?digest=sha256:nothex", body=DATA)
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
    assert upload_files(registry) == []


def test_monolithic_empty_blob(registry: Registry) -> None:
    d = Digest.from_bytes(b"")
    r = registry.request("POST", f"/v2/a/blobs/uploads/?digest={d}")
    assert r.code == 201
    assert registry.source.blobs[d] == b""


@pytest.mark.parametrize("source", ["&from=other/repo", ""])
def test_mount_existing_blob(registry: Registry, source: str) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.request("POST", f"/v2/a/blobs/uploads/?mount={d}{source}")
    assert r.code == 201
    assert r.header("Location") == f"/v2/a/blobs/{d}"
    assert r.header("Docker-Content-Digest") == str(d)
    assert upload_files(registry) == []


@pytest.mark.parametrize(
    "query",
    [f"mount={Digest.from_bytes(b'missing')}&from=other", "mount=sha256:bad&from=other", "mount={d}&from=Bad..Name"],
)
def test_mount_falls_back_to_upload(registry: Registry, query: str) -> None:
    d = registry.source.add_blob(DATA)
    r = registry.request("POST", "/v2/a/blobs/uploads/?" + query.format(d=d))
    assert r.code == 202
    assert r.header("Range") == "0-0"
    assert upload_files(registry) == [r.header("Docker-Upload-UUID")]


# -- chunks -----------------------------------------------------------------------


def test_chunked_upload(registry: Registry) -> None:
    loc = registry.start_upload("a/b")
    r = registry.request("PATCH", loc, body=DATA[:1000], headers={"Content-Range": "0-999"})
    assert r.code == 202
    assert r.header("Location") == loc
    assert r.header("Range") == "0-999"
    assert r.header("Docker-Upload-UUID") == uid_of(loc)
    r = registry.request(
        "PATCH",
        loc,
        body=DATA[1000:],
        headers={"Content-Range": f"1000-{len(DATA) - 1}", "Content-Type": "application/octet-stream"},
    )
    assert r.code == 202
    assert r.header("Range") == f"0-{len(DATA) - 1}"
    status = registry.get(loc)
    assert status.code == 204
    assert status.header("Range") == f"0-{len(DATA) - 1}"
    assert status.header("Docker-Upload-UUID") == uid_of(loc)
    d = Digest.from_bytes(DATA)
    r = registry.request("PUT", f"{loc}?digest={d}")
    assert r.code == 201
    assert r.header("Location") == f"/v2/a/b/blobs/{d}"
    assert r.header("Docker-Content-Digest") == str(d)
    assert registry.source.blobs[d] == DATA
    assert commits(registry)[0][:2] == ("a/b", d)
    assert commits(registry)[0][3] == len(DATA)
    assert upload_files(registry) == []
    assert registry.get(loc).error_code == "BLOB_UPLOAD_UNKNOWN"


def test_streamed_patch(registry: Registry) -> None:
    loc = registry.start_upload("a")
    for i in range(0, len(DATA), 3000):
        r = registry.request("PATCH", loc, body=DATA[i : i + 3000])
        assert r.code == 202
        assert r.header("Range") == f"0-{min(i + 3000, len(DATA)) - 1}"
    r = registry.request("PUT", f"{loc}?digest={Digest.from_bytes(DATA)}")
    assert r.code == 201
    assert registry.source.blobs[Digest.from_bytes(DATA)] == DATA


def test_streamed_patch_with_chunked_encoding(registry: Registry) -> None:
    loc = registry.start_upload("a")
    code, headers, _ = chunked(registry, "PATCH", loc, DATA)
    assert (code, headers["range"]) == (202, f"0-{len(DATA) - 1}")


def test_large_body_spooled_to_disk(registry: Registry) -> None:
    big = os.urandom(300 * 1024)  # above twisted.web's in-memory body limit
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=big, headers={"Content-Range": f"0-{len(big) - 1}"})
    assert r.code == 202
    r = registry.request("PUT", f"{loc}?digest={Digest.from_bytes(big)}")
    assert r.code == 201
    assert registry.source.blobs[Digest.from_bytes(big)] == big


def test_empty_patch_keeps_size(registry: Registry) -> None:
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=b"")
    assert (r.code, r.header("Range")) == (202, "0-0")


@pytest.mark.parametrize("content_range", ["5-9", "0-4", "100-104"])
def test_out_of_order_chunk(registry: Registry, content_range: str) -> None:
    loc = registry.start_upload("a")
    assert registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"}).code == 202
    r = registry.request("PATCH", loc, body=b"12345", headers={"Content-Range": content_range})
    assert (r.code, r.error_code) == (416, "RANGE_INVALID")
    assert r.header("Range") == "0-2"
    assert r.header("Location") == loc
    assert r.header("Docker-Upload-UUID") == uid_of(loc)
    assert registry.get(loc).header("Range") == "0-2"


@pytest.mark.parametrize("content_range", ["abc", "5-0", "-5", "0-", "bytes=0-"])
def test_malformed_content_range(registry: Registry, content_range: str) -> None:
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": content_range})
    assert (r.code, r.error_code) == (416, "RANGE_INVALID")
    assert r.header("Range") == "0-0"


@pytest.mark.parametrize("content_range", ["bytes=0-2", "bytes 0-2/3", "0-2/*"])
def test_lenient_content_range_forms(registry: Registry, content_range: str) -> None:
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": content_range})
    assert (r.code, r.header("Range")) == (202, "0-2")


def test_content_length_disagrees_with_range(registry: Registry) -> None:
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-9"})
    assert (r.code, r.error_code) == (400, "SIZE_INVALID")
    assert registry.get(loc).header("Range") == "0-0"


def test_chunked_body_longer_than_range(registry: Registry) -> None:
    loc = registry.start_upload("a")
    code, _, body = chunked(registry, "PATCH", loc, b"abcdef", Content_Range="0-2")
    assert code == 400
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"


def test_truncated_body(registry: Registry) -> None:
    loc = registry.start_upload("a")
    assert registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"}).code == 202
    code, _, body = chunked(registry, "PATCH", loc, b"short", Content_Range="3-102")
    assert code == 400
    assert json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert registry.get(loc).header("Range") == "0-2"
    # the upload is still usable
    assert registry.request("PATCH", loc, body=b"def", headers={"Content-Range": "3-5"}).code == 202
    r = registry.request("PUT", f"{loc}?digest={Digest.from_bytes(b'abcdef')}")
    assert r.code == 201


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x"])
def test_patch_content_type(registry: Registry, content_type: str) -> None:
    loc = registry.start_upload("a")
    r = registry.request("PATCH", loc, body=b"abc", headers={"Content-Type": content_type})
    assert (r.code, r.error_code) == (400, "BLOB_UPLOAD_INVALID")
    assert registry.get(loc).header("Range") == "0-0"
    r = registry.request("PATCH", loc, body=b"abc", headers={"Content-Type": "Application/Octet-Stream; x=y"})
    assert r.code == 202


# -- completing ------------------------------------------------------------------


def test_put_with_last_chunk(registry: Registry) -> None:
    loc = registry.start_upload("a")
    registry.request("PATCH", loc, body=DATA[:100])
    d = Digest.from_bytes(DATA)
    r = registry.request("PUT", f"{loc}?digest={d}", body=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"})
    assert r.code == 201
    assert registry.source.blobs[d] == DATA


def test_post_put_monolithic(registry: Registry) -> None:
    loc = registry.start_upload("a")
    d = Digest.from_bytes(DATA)
    r = registry.request("PUT", f"{loc}?digest={d}", body=DATA, headers={"Content-Type": "application/octet-stream"})
    assert r.code == 201
    assert registry.source.blobs[d] == DATA


def test_put_wrong_digest(registry: Registry) -> None:
    loc = registry.start_upload("a")
    registry.request("PATCH", loc, body=DATA)
    wrong = Digest.from_bytes(b"wrong")
    r = registry.request("PUT", f"{loc}?digest={wrong}")
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
    assert r.json()["errors"][0]["detail"] == {"expected": str(wrong), "actual": str(Digest.from_bytes(DATA))}
    assert registry.source.blobs == {}
    assert commits(registry) == []
    assert upload_files(registry) == []
    assert registry.get(loc).error_code == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize(
    "query", ["", "?digest=", "?digest=sha256:123", f"?digest={'sha256:' + 'a' * 64}&digest=sha256:x"]
)
def test_put_bad_digest_parameter_keeps_upload(registry: Registry, query: str) -> None:
    loc = registry.start_upload("a")
    registry.request("PATCH", loc, body=b"abc")
    r = registry.request("PUT", loc + query)
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")
    assert registry.get(loc).header("Range") == "0-2"


def test_put_repeated_digest_parameters(registry: Registry) -> None:
    loc = registry.start_upload("a")
    d = Digest.from_bytes(b"abc")
    r = registry.request("PUT", f"{loc}?digest={d}&digest={d}", body=b"abc")
    assert r.code == 201
    loc = registry.start_upload("a")
    r = registry.request("PUT", f"{loc}?digest={d}&digest={Digest.from_bytes(b'x')}", body=b"abc")
    assert (r.code, r.error_code) == (400, "DIGEST_INVALID")


def test_put_existing_blob_skips_commit(registry: Registry) -> None:
    d = registry.source.add_blob(DATA)
    loc = registry.start_upload("a")
    r = registry.request("PUT", f"{loc}?digest={d}", body=DATA)
    assert r.code == 201
    assert r.header("Docker-Content-Digest") == str(d)
    assert commits(registry) == []
    assert upload_files(registry) == []


def test_cancel_upload(registry: Registry) -> None:
    loc = registry.start_upload("a")
    registry.request("PATCH", loc, body=b"abc")
    r = registry.request("DELETE", loc)
    assert r.code == 204
    assert upload_files(registry) == []
    assert registry.get(loc).error_code == "BLOB_UPLOAD_UNKNOWN"
    assert registry.request("DELETE", loc).code == 404


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
@pytest.mark.parametrize("uid", ["0123456789abcdef0123456789abcdef", "not-an-id", "..%2F..%2Fetc"])
def test_unknown_upload(registry: Registry, method: str, uid: str) -> None:
    r = registry.request(method, f"/v2/a/blobs/uploads/{uid}?digest={Digest.from_bytes(b'')}", body=b"x")
    assert (r.code, r.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_upload_of_another_repository(registry: Registry, method: str) -> None:
    loc = registry.start_upload("a")
    other = loc.replace("/v2/a/", "/v2/b/")
    r = registry.request(method, f"{other}?digest={Digest.from_bytes(b'abc')}", body=b"abc")
    assert (r.code, r.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert registry.get(loc).code == 204
    assert registry.get(loc).header("Range") == "0-0"


def test_repository_names_with_api_words(registry: Registry) -> None:
    for repo in ["a/blobs/b", "blobs/uploads", "x/manifests/y", "tags/list", "referrers/x"]:
        loc = registry.start_upload(repo)
        assert loc.startswith(f"/v2/{repo}/blobs/uploads/")
        registry.request("PATCH", loc, body=b"abc", headers={"Content-Range": "0-2"})
        d = Digest.from_bytes(b"abc")
        r = registry.request("PUT", f"{loc}?digest={d}")
        assert r.code == 201, repo
        assert r.header("Location") == f"/v2/{repo}/blobs/{d}"
        assert registry.get(f"/v2/{repo}/blobs/{d}").body == b"abc"


def test_digest_of_spooled_upload_matches(registry: Registry) -> None:
    loc = registry.start_upload("a")
    registry.request("PATCH", loc, body=DATA)
    r = registry.request("PUT", f"{loc}?digest=sha256:{hashlib.sha256(DATA).hexdigest()}")
    assert r.code == 201
