"""OCI error bodies (``kraken.registry.errors``)."""

from __future__ import annotations

from kraken.registry.errors import BlobUnknown, RegistryError, Unsupported


def test_registry_error_body() -> None:
    e = BlobUnknown(detail={"digest": "x"})
    assert (e.status, e.code) == (404, "BLOB_UNKNOWN")
    assert e.to_json() == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {"digest": "x"}}]
    }
    plain = RegistryError(418, "TEAPOT", "short and stout")
    assert plain.to_json() == {"errors": [{"code": "TEAPOT", "message": "short and stout"}]}
    assert Unsupported("nope", status=404).status == 404
