"""A pushed manifest's references: how many it may have, and which are missing.

Every reference costs the registry a lookup before the manifest is
accepted, so their number is capped (``ReferencePolicy.max_references``,
checked before any lookup) and the lookups go in batches: the blobs through
``IRegistrySource.stat_blobs``, ``batch`` digests a question; the child
manifests ``concurrency`` at a time. Batches go one after another, and the
first batch that finds something missing ends the check: the push fails
whatever the rest holds, so the rest is not looked up.

Why ``MANIFEST_INVALID`` (400) for too many references: the manifest is
well-formed, but this registry will not accept it, and asking again will
not help. ``TOOMANYREQUESTS`` (429) would make clients retry,
``SIZE_INVALID`` and 413 are about byte counts, ``DENIED`` about access,
``UNSUPPORTED`` (405) about operations; the spec says ``MANIFEST_INVALID``
is the answer when a manifest fails the registry's checks, and clients show
its message, which names the count and the limit.
"""

from __future__ import annotations

import attrs

from kraken.core import Digest
from kraken.net.bounded import bounded_map, chunks
from kraken.registry.errors import ManifestBlobUnknown, ManifestInvalid
from kraken.registry.manifests import ParsedManifest
from kraken.registry.source import IRegistrySource

#: Docker images stop at 127 layers (overlayfs' limit) plus the config; a
#: multi-platform index with attestations has a few dozen entries; OCI
#: artifacts (ORAS pushes one layer per file) can have hundreds. 1000 leaves
#: room for all of that and bounds one push's lookups.
DEFAULT_MAX_REFERENCES = 1000
#: Blob digests per question to the source (the origin answers up to 1000).
DEFAULT_CHECK_BATCH = 100
#: Lookups one manifest's check may have in flight.
DEFAULT_CHECK_CONCURRENCY = 8
#: Missing digests a refusal's message names (its ``detail`` lists all found).
NAMED = 10


@attrs.frozen
class ReferencePolicy:
    max_references: int = DEFAULT_MAX_REFERENCES
    batch: int = DEFAULT_CHECK_BATCH
    concurrency: int = DEFAULT_CHECK_CONCURRENCY

    def __attrs_post_init__(self) -> None:
        if min(self.max_references, self.batch, self.concurrency) < 1:
            raise ValueError("max_references, batch and concurrency must be at least 1")

    def check_count(self, parsed: ParsedManifest) -> None:
        """Refuse a manifest with more references than ``max_references``."""
        count = len(parsed.required_blobs()) + len(parsed.required_manifests())
        if count > self.max_references:
            raise ManifestInvalid(
                f"manifest has {count} references (blobs and manifests); "
                f"this registry accepts at most {self.max_references}",
                detail={"references": count, "limit": self.max_references},
            )

    async def check_exist(self, source: IRegistrySource, repo: str, parsed: ParsedManifest) -> None:
        """Raise ``MANIFEST_BLOB_UNKNOWN`` if a reference is missing (see the module docstring)."""
        blobs = parsed.required_blobs()
        manifests = parsed.required_manifests()
        missing: list[Digest] = []
        checked = 0
        for chunk in chunks(blobs, self.batch):
            sizes = await source.stat_blobs(repo, chunk)
            missing += [d for d in chunk if sizes.get(d) is None]
            checked += len(chunk)
            if missing:
                break
        else:
            for chunk in chunks(manifests, self.batch):
                found = await bounded_map(chunk, self.concurrency, lambda d: source.get_manifest(repo, d))
                missing += [d for d, record in zip(chunk, found, strict=True) if record is None]
                checked += len(chunk)
                if missing:
                    break
        if not missing:
            return
        complete = checked == len(blobs) + len(manifests)
        named = ", ".join(str(d) for d in missing[:NAMED]) + (", ..." if len(missing) > NAMED else "")
        raise ManifestBlobUnknown(
            f"manifest references {'' if complete else 'at least '}{len(missing)} "
            f"unknown blob(s) or manifest(s): {named}",
            detail={"missing": [str(d) for d in missing]},
        )
