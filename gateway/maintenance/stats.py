"""Storage statistics: what the store holds, what dedup and compression saved.

Everything is derived from one :meth:`MetadataStore.storage_stats` snapshot (aggregates
the store computes; nothing is read from the backend), so it is cheap and read-only, and
safe next to a live gateway. Definitions:

* logical bytes: the sizes of every stored object version (current and noncurrent) plus
  the parts of unfinished multipart uploads: what clients would download;
* inline bytes: the manifests of tiny objects sealed into their manifest (the sealed record,
  its wrapped DEK and the chunk entry), which live in the metadata store, not in packs; each
  such version stores its own copy (no dedup);
* unique bytes: the plaintext of every chunk in the chunk index, each once, plus the
  plaintext of the inline versions;
* stored bytes: those chunks' records in packs (compressed and sealed), plus the inline bytes;
* physical bytes: the packs themselves (with headers, trailers, and garbage that GC has
  not yet reclaimed), plus the inline bytes;
* dedup ratio = logical / unique; compression ratio = unique / stored;
* bytes by tier: logical bytes per storage class (tiers map to storage classes).
"""

from __future__ import annotations

from typing import Any

from gateway.meta.store import MetadataStore, StorageStats


def ratio(numerator: int, denominator: int) -> float | None:
    """``numerator / denominator`` rounded to 3 places; None when there is nothing to divide."""
    return round(numerator / denominator, 3) if denominator else None


def summarize(s: StorageStats) -> dict[str, Any]:
    """The numbers ``strata stats --json`` prints (stable keys, bytes as integers)."""
    logical = s.version_bytes + s.part_bytes
    unique = s.chunk_plain_bytes + s.inline_plain_bytes
    stored = s.chunk_stored_bytes + s.inline_bytes
    return {
        "objects": s.objects,
        "versions": s.versions,
        "delete_markers": s.delete_markers,
        "multipart_parts": s.parts,
        "logical_bytes": logical,
        "current_bytes": s.current_bytes,
        "unique_chunks": s.chunks,
        "unique_bytes": unique,
        "stored_bytes": stored,
        "packs": s.packs,
        "pack_bytes": s.pack_bytes,
        "inline_versions": s.inline_versions,
        "inline_bytes": s.inline_bytes,
        "physical_bytes": s.pack_bytes + s.inline_bytes,
        "dedup_ratio": ratio(logical, unique),
        "compression_ratio": ratio(unique, stored),
        "bytes_by_tier": dict(sorted(s.bytes_by_class.items())),
    }


async def collect(meta: MetadataStore) -> dict[str, Any]:
    return summarize(await meta.storage_stats())
