"""The metadata store interface that every implementation (SQLite now, sharded PostgreSQL
later) provides, and that the contract tests exercise.

Writes that make data visible (object versions, parts) take the :class:`StagedData` of the
ingest that produced them, and index its chunks and packs in the same transaction, so a
failure before the commit leaves nothing visible. The same transaction revives every chunk
the new manifest names that garbage collection condemned (and every pack it wrote that gc
retired), and fails with a retryable ``SlowDown``, committing nothing, if gc already swept
one (docs/operations.md, "Garbage collection").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation
from gateway.events import OutboxEvent
from gateway.meta.models import (
    AccessKey,
    AuditRecord,
    Bucket,
    ChunkMove,
    DeleteOutcome,
    IndexedChunk,
    ListedObject,
    MultipartUpload,
    NewChunk,
    ObjectVersion,
    PackRecord,
    PackUsage,
    Part,
    PoolUsage,
    StagedData,
    User,
    WriteCondition,
)


class MetadataStore(Protocol):
    # False: a put_object/put_part that failed indexed nothing, so the caller may delete the
    # packs its ingest wrote. True (sharded PostgreSQL): the chunk rows are indexed on other
    # shards before the version commits, and dedup may have found them before the commit
    # failed: the packs must stay, and gc reclaims them.
    index_survives_failed_commit: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # users and keys
    async def create_user(self, name: str, wrapped_dedup_key: WrappedKey) -> User: ...
    async def get_user(self, name: str) -> User | None: ...
    async def put_access_key(self, key: AccessKey) -> None: ...
    async def get_access_key(self, access_key: str) -> AccessKey | None: ...
    async def has_access_key_for(self, user: str) -> bool: ...

    # buckets
    async def create_bucket(self, bucket: Bucket) -> bool: ...  # False if it exists
    async def get_bucket(self, name: str) -> Bucket | None: ...
    async def list_buckets(self, owner: str) -> list[Bucket]: ...
    async def delete_bucket(self, name: str) -> None: ...  # raises S3Error BucketNotEmpty

    # per-bucket configuration documents (cors, versioning, tagging, ...); None deletes
    async def put_bucket_config(self, bucket: str, name: str, body: str | None) -> None: ...
    async def get_bucket_config(self, bucket: str, name: str) -> str | None: ...

    # objects
    async def put_object(
        self,
        version: ObjectVersion,
        staged: StagedData,
        event: str = "ObjectCreated:Put",
        condition: WriteCondition | None = None,
    ) -> None: ...
    async def get_object(
        self, bucket: str, key: str, version_id: str | None = None
    ) -> ObjectVersion | None: ...  # the latest version (possibly a delete marker) or the one asked
    async def delete_object(
        self, bucket: str, key: str, version_id: str | None = None, marker: ObjectVersion | None = None
    ) -> DeleteOutcome: ...
    async def set_object_tags(
        self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> bool: ...  # False when the version (or a current object) does not exist
    async def list_versions(
        self, bucket: str, prefix: str, key: str, inclusive: bool, version_marker: str, limit: int
    ) -> list[ObjectVersion]: ...
    async def list_objects(
        self, bucket: str, prefix: str, after: str, inclusive: bool, limit: int
    ) -> list[ListedObject]: ...  # current versions only (no delete markers)

    # multipart
    async def create_upload(self, upload: MultipartUpload) -> None: ...
    async def get_upload(self, bucket: str, upload_id: str) -> MultipartUpload | None: ...
    async def list_uploads(
        self, bucket: str, prefix: str, key: str, inclusive: bool, upload_id_marker: str, limit: int
    ) -> list[MultipartUpload]: ...  # ordered by (key, initiated, upload_id), from the markers
    async def put_part(self, upload_id: str, part: Part, staged: StagedData) -> None: ...
    async def list_parts(self, upload_id: str, after: int, limit: int) -> list[Part]: ...
    async def complete_upload(
        self, upload_id: str, version: ObjectVersion, condition: WriteCondition | None = None
    ) -> bool: ...
    async def abort_upload(self, upload_id: str) -> bool: ...

    # chunk index and packs
    async def lookup_chunks(
        self, chunk_ids: list[bytes], *, live_only: bool = False
    ) -> dict[bytes, ChunkLocation]: ...  # live_only (dedup lookups): leave out chunks gc condemned
    async def get_pack(self, pack_id: str) -> PackRecord | None: ...

    # event outbox: rows in ``seq`` order per shard (a bucket's rows live on its shard, so
    # one key's events are ordered); the relay (gateway/events.py) publishes them under a
    # per-shard lease and keeps a durable cursor (the last published seq) per shard
    async def outbox_shards(self) -> int: ...  # shards are numbered 0..n-1 (SQLite: 1)
    async def read_outbox(self, after: int, limit: int, shard: int = 0) -> list[OutboxEvent]: ...
    async def get_relay_cursor(self, shard: int) -> int: ...  # 0 before anything was published
    async def advance_relay_cursor(self, shard: int, seq: int) -> None: ...  # never moves back
    async def claim_relay(self, shard: int, owner: str, ttl_seconds: float) -> bool: ...  # take/renew
    async def release_relay(self, shard: int, owner: str) -> None: ...  # only if ``owner`` holds it
    async def trim_outbox(self, shard: int, before: int, limit: int) -> int: ...  # published rows only
    async def expire_outbox(
        self, shard: int, created_before: float, limit: int, published_only: bool
    ) -> int: ...  # of the oldest ``limit`` rows, those created before; published ones only if asked

    # audit log (gateway/observability/audit.py batches records into one call): each record
    # becomes an ``audit`` row and an outbox row (``AuditRecord.to_event()``), in one transaction
    async def append_audit(self, records: list[AuditRecord]) -> None: ...
    async def read_audit(self, after: int, limit: int) -> list[AuditRecord]: ...  # by seq

    # health and saturation (readiness probe, metadata_pool_* gauges)
    async def ping(self) -> None: ...  # raises unless the store can serve reads and writes now
    def pool_usage(self) -> PoolUsage: ...  # cheap, synchronous: called on every /metrics scrape

    # maintenance (fsck, stats, gc): read-only keyset scans in a stable order, one page per
    # call, so a job holds one page in memory and sees a live gateway's commits as they land
    async def scan_versions(
        self, after: tuple[str, str, str] | None, limit: int
    ) -> list[ObjectVersion]: ...  # every version and delete marker, by (bucket, key, version_id)
    async def scan_parts(
        self, after: tuple[str, int] | None, limit: int
    ) -> list[tuple[MultipartUpload, Part]]: ...  # parts of unfinished uploads, by (upload_id, part_number)
    async def restore_index(self, staged: StagedData) -> tuple[int, int]: ...
    # ^ add pack and chunk rows recovered from pack headers/trailers where none exist (rows
    #   already present are kept); returns (packs added, chunks added). Idempotent.
    async def storage_stats(self) -> StorageStats: ...


@dataclass(frozen=True)
class StorageStats:
    """Aggregates over the whole store (one consistent read)."""

    objects: int  # current versions that are not delete markers
    versions: int  # every version that is not a delete marker (current and noncurrent)
    delete_markers: int
    version_bytes: int  # sum of the sizes of ``versions``
    current_bytes: int  # sum of the sizes of ``objects``
    parts: int  # parts of unfinished multipart uploads
    part_bytes: int
    chunks: int  # rows of the chunk index
    chunk_plain_bytes: int  # their plaintext bytes (each unique chunk once)
    chunk_stored_bytes: int  # their record bytes in packs (compressed, sealed)
    packs: int
    pack_bytes: int  # stored pack bytes (headers, records, trailers; garbage not yet collected)
    bytes_by_class: dict[str, int] = field(default_factory=dict)  # version bytes per storage class
    # versions whose data is sealed into their manifest (no chunk row, no pack): how many,
    # their plaintext bytes (part of ``version_bytes``), and their manifests' bytes (the sealed
    # record, wrapped DEK and chunk entry), which live in the metadata store
    inline_versions: int = 0
    inline_plain_bytes: int = 0
    inline_bytes: int = 0


WrappedKeyKind = Literal["pack", "user", "access_key"]  # the rows that hold a wrapped key


def check_replacement(old: Manifest, new: Manifest) -> None:
    """Raise ValueError unless ``new`` may replace ``old`` in :meth:`MaintenanceStore.replace_manifest`:
    the same chunks and lengths, and the same indexed chunk ids (only how the data is sealed or
    its DEK wrapped may change)."""
    if (new.chunk_ids, new.lengths, new.indexed_ids) != (old.chunk_ids, old.lengths, old.indexed_ids):
        raise ValueError("a replacement manifest must name the same chunks, stored the same way")


class MaintenanceStore(MetadataStore, Protocol):
    """What garbage collection and key jobs need beyond :class:`MetadataStore`
    (gateway/maintenance/gc.py, repack.py, keys.py). Every write is one transaction whose
    conditions are re-checked inside it, so each is safe against a live gateway's commits."""

    # chunk index, by chunk id (keyset pages)
    async def scan_chunks(self, after: bytes | None, limit: int) -> list[IndexedChunk]: ...
    async def condemn_chunks(self, chunk_ids: list[bytes], at: float) -> int: ...  # those not condemned
    async def revive_chunks(self, chunk_ids: list[bytes]) -> int: ...  # clear condemned_at
    async def sweep_chunks(self, chunk_ids: list[bytes], condemned_before: float) -> tuple[int, int]: ...

    # ^ delete the rows still condemned at a time < condemned_before; returns (rows, record bytes)

    # packs, by pack id (keyset pages)
    async def scan_pack_usage(self, after: str | None, limit: int) -> list[PackUsage]: ...
    async def pack_chunks(self, pack_id: str, after_offset: int, limit: int) -> list[NewChunk]: ...
    # ^ the rows pointing into one pack, by offset
    async def retire_packs(self, pack_ids: list[str], at: float) -> list[str]: ...
    # ^ mark retired the live ones no chunk row points into; returns those retired
    async def delete_retired_packs(self, retired_before: float, limit: int) -> list[PackRecord]: ...
    # ^ drop rows of packs retired before then (still without chunk rows) and tombstone them:
    #   a late commit naming a tombstoned pack fails. The caller then deletes their blobs.
    async def tombstone_orphans(self, pack_ids: list[str], at: float) -> list[str]: ...
    # ^ of blobs found in the backend: those with no pack row (now tombstoned): safe to delete
    async def prune_tombstones(self, before: float) -> int: ...
    async def repoint_chunks(self, pack: PackRecord, moves: list[ChunkMove]) -> int: ...

    # ^ insert the new pack's row and move the rows still at their old place; returns rows moved

    # wrapped keys (KEK rotation), by row id (keyset pages)
    async def scan_wrapped_keys(
        self, kind: WrappedKeyKind, kek_id: str, below_version: int, after: str | None, limit: int
    ) -> list[tuple[str, WrappedKey]]: ...
    async def rewrap_keys(
        self, kind: WrappedKeyKind, rows: list[tuple[str, WrappedKey, WrappedKey]]
    ) -> int: ...

    # ^ (row id, old, new): replaces each row's key only if it still holds ``old``

    # inline manifests (key jobs re-wrap or re-seal the DEK and record a tiny object carries)
    async def scan_inline_versions(
        self, after: tuple[str, str, str] | None, limit: int
    ) -> list[ObjectVersion]: ...  # like scan_versions, only versions whose manifest is inline
    async def replace_manifest(
        self, bucket: str, key: str, version_id: str, old: Manifest, new: Manifest
    ) -> bool: ...

    # ^ compare-and-set: replace the version's manifest only if its stored bytes still equal
    #   ``old`` (a concurrent overwrite or delete wins: False). ``new`` must name the same data
    #   (:func:`check_replacement`): no chunk reference changes, so gc needs no claim, and no
    #   event is emitted. A serving gateway's cache may keep ``old`` until its TTL runs out;
    #   that copy still reads (every KEK version stays in the keyring, and ``old``'s DEK still
    #   opens ``old``'s record), so correctness never depends on invalidating it.

    # durable state of resumable jobs (None deletes)
    # One holder at a time across processes, until ``ttl_seconds`` pass without a renewal
    # (claiming again as the same owner renews); gateway/maintenance/lease.py.
    async def claim_lease(self, name: str, owner: str, ttl_seconds: float) -> bool: ...
    async def release_lease(self, name: str, owner: str) -> None: ...  # only if ``owner`` holds it
    async def lease_holder(self, name: str) -> str | None: ...  # the owner of an unexpired lease
    async def get_job(self, name: str) -> dict[str, Any] | None: ...
    async def put_job(self, name: str, state: dict[str, Any] | None) -> None: ...

    # wait until every commit in flight now has ended (gc, as each mark begins). A store
    # whose commits check their chunks in the commit transaction has nothing to wait for.
    async def settle_commits(self) -> None: ...
