"""Write OCI image layouts without a container engine.

Used by the integration tests, the benchmarks and anyone trying the herd out::

    python -m kraken.cli.image DIR [--tag v1] [--layers N] [--random-layer-size 64MiB]
                                    [--seed S] [--index]

``DIR`` becomes an OCI image layout (image-layout spec v1.0.0): ``oci-layout``,
``blobs/sha256/<hex>`` and ``index.json``. The image has ``--layers``
uncompressed tar layers (``application/vnd.oci.image.layer.v1.tar``, every
entry with mtime 0, uid/gid 0): layer 0 holds one file of seeded pseudo-random
bytes (``--random-layer-size``), written in chunks and never held in memory;
the other layers hold small seeded text files. An image config lists the
layers' ``rootfs.diff_ids``; the image manifest is tagged ``--tag`` through the
``org.opencontainers.image.ref.name`` annotation in ``index.json``, so
``skopeo copy oci:DIR:TAG ...`` reads it.

With ``--index`` the layout also holds a multi-platform OCI image index tagged
``<tag>-index``: linux/amd64 (the tagged image manifest itself) and
linux/arm64 (a second config and manifest sharing the same layers).
``skopeo copy --all oci:DIR:<tag>-index ...`` copies all of it.

The same seed and options give byte-identical blobs, so every digest is
reproducible; different seeds give different blobs. The command prints the
digests as JSON; ``write_layout`` returns them as a ``Layout``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from kraken.config import parse_size

__all__ = [
    "MEDIA_TYPE_CONFIG",
    "MEDIA_TYPE_INDEX",
    "MEDIA_TYPE_LAYER",
    "MEDIA_TYPE_MANIFEST",
    "Blob",
    "Layout",
    "write_layout",
]

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"

_CHUNK = 1 << 20  # bytes generated and written per step for the random layer


@dataclass(frozen=True)
class Blob:
    """A content descriptor: digest, size and media type."""

    digest: str
    size: int
    media_type: str

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layout:
    """What ``write_layout`` wrote, with every digest."""

    path: str
    tag: str
    manifest: Blob  # the tagged image manifest (linux/amd64 when there is an index)
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]  # equal to the layer digests: the layers are uncompressed
    index_tag: str | None = None
    index: Blob | None = None  # the multi-platform image index, when asked for
    platform_manifests: tuple[Blob, ...] = ()  # amd64 then arm64
    platform_configs: tuple[Blob, ...] = ()
    blobs: tuple[Blob, ...] = field(default=())  # every blob in blobs/sha256, in write order

    def blob_path(self, digest: str) -> str:
        algorithm, _, hex_ = digest.partition(":")
        return os.path.join(self.path, "blobs", algorithm, hex_)

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a (small) blob: manifests, configs, the index."""
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _SeededStream(io.RawIOBase):
    """``size`` pseudo-random bytes from ``seed``, produced on demand.

    The bytes are made in fixed ``_CHUNK`` blocks, so the stream is the same
    whatever sizes the reader asks for.
    """

    def __init__(self, seed: str, size: int) -> None:
        super().__init__()
        self._rng = random.Random(f"kraken-image-random-layer:{seed}")
        self._left = size
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left + len(self._buf)
        while len(self._buf) < n and self._left > 0:
            step = min(_CHUNK, self._left)
            self._buf += self._rng.randbytes(step)
            self._left -= step
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class _BlobWriter:
    """A file-like sink that hashes what it writes into a temporary file.

    ``commit()`` moves it to ``blobs/sha256/<hex>`` and returns the digest and
    size, so a multi-GiB layer is hashed while it is written, in one pass.
    """

    def __init__(self, blobs_dir: str) -> None:
        self._dir = blobs_dir
        fd, self._tmp = tempfile.mkstemp(dir=blobs_dir, prefix=".tmp-")
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def commit(self) -> tuple[str, int]:
        self._file.close()
        hex_ = self._hash.hexdigest()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, os.path.join(self._dir, hex_))
        return f"sha256:{hex_}", self._size

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


class _LayoutWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.blobs_dir = os.path.join(path, "blobs", "sha256")
        os.makedirs(self.blobs_dir, exist_ok=True)
        self.written: list[Blob] = []

    def _record(self, blob: Blob) -> Blob:
        if blob.digest not in {b.digest for b in self.written}:
            self.written.append(blob)
        return blob

    def put_bytes(self, data: bytes, media_type: str) -> Blob:
        w = _BlobWriter(self.blobs_dir)
        try:
            w.write(data)
        except BaseException:
            w.abort()
            raise
        digest, size = w.commit()
        return self._record(Blob(digest, size, media_type))

    def put_tar(self, entries: Sequence[tuple[str, int, BinaryIO | None]]) -> Blob:
        """A tar layer of ``(name, size, stream)``; a ``None`` stream is a directory."""
        w = _BlobWriter(self.blobs_dir)
        try:
            with tarfile.open(fileobj=w, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=_CHUNK) as tar:  # type: ignore[call-overload]
                for name, size, stream in entries:
                    info = tarfile.TarInfo(name)
                    info.mtime = 0
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if stream is None:
                        info.type = tarfile.DIRTYPE
                        info.mode = 0o755
                        tar.addfile(info)
                    else:
                        info.size = size
                        info.mode = 0o644
                        tar.addfile(info, stream)
        except BaseException:
            w.abort()
            raise
        digest, size = w.commit()
        return self._record(Blob(digest, size, MEDIA_TYPE_LAYER))


def _config(architecture: str, diff_ids: Sequence[str], seed: str) -> dict[str, Any]:
    return {
        "architecture": architecture,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.kraken.test.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"kraken.cli.image layer {i}"}
            for i in range(len(diff_ids))
        ],
    }


def _manifest(config: Blob, layers: Sequence[Blob]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }


def _layers(w: _LayoutWriter, layers: int, size: int, seed: str) -> list[Blob]:
    """One layer of ``size`` seeded random bytes, then ``layers - 1`` small text layers."""
    blobs: list[Blob] = [w.put_tar([("data/", 0, None), ("data/random.bin", size, _SeededStream(seed, size))])]  # type: ignore[list-item]
    rng = random.Random(f"kraken-image-small-layers:{seed}")
    for i in range(1, layers):
        text = f"layer {i} of image seed {seed}\n{rng.getrandbits(256):064x}\n".encode()
        blobs.append(w.put_tar([(f"layer{i}/", 0, None), (f"layer{i}/hello.txt", len(text), io.BytesIO(text))]))
    return blobs


def _two_platforms(
    w: _LayoutWriter, manifest: Blob, config: Blob, layer_blobs: list[Blob], seed: str
) -> tuple[Blob, tuple[Blob, Blob], tuple[Blob, Blob]]:
    """An arm64 twin of the amd64 image and the index of both: (index, manifests, configs)."""
    diff_ids = tuple(b.digest for b in layer_blobs)
    arm_config = w.put_bytes(_canonical_json(_config("arm64", diff_ids, seed)), MEDIA_TYPE_CONFIG)
    arm_manifest = w.put_bytes(_canonical_json(_manifest(arm_config, layer_blobs)), MEDIA_TYPE_MANIFEST)
    index_doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            manifest.descriptor(platform={"architecture": "amd64", "os": "linux"}),
            arm_manifest.descriptor(platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
        ],
    }
    index_blob = w.put_bytes(_canonical_json(index_doc), MEDIA_TYPE_INDEX)
    return index_blob, (manifest, arm_manifest), (config, arm_config)


def write_layout(
    path: str,
    *,
    tag: str = "v1",
    layers: int = 3,
    random_layer_size: int | str = 1 << 20,
    seed: str | int = 0,
    index: bool = False,
) -> Layout:
    """Write an OCI image layout at ``path`` (created if missing) and return its digests.

    An existing layout at ``path`` gains blobs and has its ``index.json``
    replaced.
    """
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    size = parse_size(random_layer_size)
    seed = str(seed)
    w = _LayoutWriter(path)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    layer_blobs = _layers(w, layers, size, seed)
    diff_ids = tuple(b.digest for b in layer_blobs)

    config = w.put_bytes(_canonical_json(_config("amd64", diff_ids, seed)), MEDIA_TYPE_CONFIG)
    manifest = w.put_bytes(_canonical_json(_manifest(config, layer_blobs)), MEDIA_TYPE_MANIFEST)
    entries = [manifest.descriptor(annotations={REF_NAME: tag})]

    index_blob = index_tag = None
    platform_manifests: tuple[Blob, ...] = ()
    platform_configs: tuple[Blob, ...] = ()
    if index:
        index_blob, platform_manifests, platform_configs = _two_platforms(w, manifest, config, layer_blobs, seed)
        index_tag = f"{tag}-index"
        entries.append(index_blob.descriptor(annotations={REF_NAME: index_tag}))

    top = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries}
    tmp = os.path.join(path, ".index.json.tmp")
    with open(tmp, "wb") as f:
        f.write(_canonical_json(top))
    os.replace(tmp, os.path.join(path, "index.json"))

    return Layout(
        path=os.path.abspath(path),
        tag=tag,
        manifest=manifest,
        config=config,
        layers=tuple(layer_blobs),
        diff_ids=diff_ids,
        index_tag=index_tag,
        index=index_blob,
        platform_manifests=platform_manifests,
        platform_configs=platform_configs,
        blobs=tuple(w.written),
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m kraken.cli.image") -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write an OCI image layout (uncompressed, reproducible tar layers) and print its digests.",
    )
    p.add_argument("dir", help="layout directory (created if missing)")
    p.add_argument("--tag", default="v1", help="tag of the image manifest (default v1)")
    p.add_argument("--layers", type=int, default=3, help="number of layers, at least 1 (default 3)")
    p.add_argument(
        "--random-layer-size",
        default="1MiB",
        help="size of the seeded random file in layer 0, e.g. 64MiB (default 1MiB)",
    )
    p.add_argument("--seed", default="0", help="seed: the same seed gives the same digests (default 0)")
    p.add_argument("--index", action="store_true", help="also write a two-platform OCI index tagged <tag>-index")
    args = p.parse_args(argv)
    try:
        size = parse_size(args.random_layer_size)
        layout = write_layout(
            args.dir, tag=args.tag, layers=args.layers, random_layer_size=size, seed=args.seed, index=args.index
        )
    except (ValueError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    json.dump(layout.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
