"""Plain records exchanged with the metadata store (no SQL, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass, field

from crypto.kek import WrappedKey
from dedup.manifest import Manifest
from dedup.pack import ChunkLocation


@dataclass(frozen=True)
class User:
    name: str
    # Tenant dedup key (BLAKE3 key), wrapped by the KEK; unwrapped by the caller.
    wrapped_dedup_key: WrappedKey


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    user: str
    wrapped_secret: WrappedKey


@dataclass(frozen=True)
class Bucket:
    name: str
    owner: str
    region: str
    created: float


NULL_VERSION = "null"  # the version id of objects written while versioning is off or suspended


@dataclass(frozen=True)
class ObjectVersion:
    """One stored object: its manifest and the metadata S3 returns with it."""

    bucket: str
    key: str
    version_id: str
    size: int
    etag: str  # without quotes
    last_modified: float  # epoch seconds
    manifest: Manifest
    content_type: str = "binary/octet-stream"
    # Standard headers kept verbatim (cache-control, content-disposition, ...), lower-case names.
    headers: dict[str, str] = field(default_factory=dict)
    user_meta: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* without the prefix
    # {"algorithm": "CRC32", "value": b64, "type": "FULL_OBJECT"|"COMPOSITE"} or empty.
    checksum: dict[str, str] = field(default_factory=dict)
    parts: int = 0  # number of multipart parts, 0 for a single PUT
    storage_class: str = "STANDARD"
    delete_marker: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    is_latest: bool = True  # as read from the store; ignored on write


@dataclass(frozen=True)
class DeleteOutcome:
    version_id: str | None  # the version removed or the delete marker created
    delete_marker: bool  # a delete marker was created, or the removed version was one
    existed: bool


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    last_modified: float
    storage_class: str


@dataclass(frozen=True)
class PackRecord:
    pack_id: str
    wrapped_dek: WrappedKey
    size: int


@dataclass(frozen=True)
class NewChunk:
    chunk_id: bytes
    location: ChunkLocation


@dataclass(frozen=True)
class StagedData:
    """What an ingest wrote to the backend and must be indexed in the same commit."""

    packs: list[PackRecord]
    chunks: list[NewChunk]


@dataclass(frozen=True)
class MultipartUpload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    owner: str
    content_type: str
    headers: dict[str, str]
    user_meta: dict[str, str]
    checksum_algorithm: str | None
    checksum_type: str | None
    tags: dict[str, str] = field(default_factory=dict)  # x-amz-tagging, applied on completion


@dataclass(frozen=True)
class Part:
    part_number: int
    size: int
    etag: str
    last_modified: float
    manifest: Manifest
    checksum: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteCondition:
    """Conditional write (PutObject / CompleteMultipartUpload): checked inside the commit
    transaction, so of two racing writers exactly one wins."""

    if_match: str | None = None  # the current ETag must be this
    if_none_match: bool = False  # ``If-None-Match: *``: the key must not exist

    def check(self, current_etag: str | None) -> None:
        from gateway.s3.errors import S3Error

        if self.if_none_match and current_etag is not None:
            raise S3Error("PreconditionFailed", Condition="If-None-Match")
        if self.if_match is not None:
            if current_etag is None:
                raise S3Error("NoSuchKey")
            if self.if_match != "*" and self.if_match.strip('"') != current_etag:
                raise S3Error("PreconditionFailed", Condition="If-Match")


@dataclass(frozen=True)
class AuditRecord:
    """One audited request (every mutation and every object download): who did what to
    which resource, from where, and how it ended. ``seq`` is assigned by the store."""

    time: float  # epoch seconds when the request arrived
    request_id: str
    user: str | None  # None when the request was not authenticated
    access_key: str | None  # the access key id (never the secret)
    action: str  # the S3 operation, e.g. PutObject
    bucket: str | None
    key: str | None
    version_id: str | None
    ip: str | None
    user_agent: str | None
    status: int
    seq: int = 0

    def to_event(self) -> dict[str, object]:
        """The outbox body of this record (``"kind": "audit"``; the relay publishes it to the
        default topic). Every store writes this same shape."""
        return {
            "kind": "audit",
            "time": self.time,
            "requestId": self.request_id,
            "user": self.user,
            "accessKeyId": self.access_key,
            "action": self.action,
            "bucket": self.bucket,
            "key": self.key,
            "versionId": self.version_id,
            "ip": self.ip,
            "userAgent": self.user_agent,
            "status": self.status,
        }


@dataclass(frozen=True)
class PoolUsage:
    """How busy the store's connections are (exported as ``metadata_pool_*`` gauges).

    SQLite: its one writer connection (``in_use`` 1 while a write group commits) and the
    writes queued behind it. PostgreSQL: asyncpg connections checked out, and the pools'
    maximum size, summed over shards."""

    in_use: int
    size: int
    waiting: int = 0


@dataclass(frozen=True)
class IndexedChunk:
    """A chunk index row as garbage collection sees it."""

    chunk_id: bytes
    pack_id: str
    length: int  # record bytes in the pack
    created: float
    condemned_at: float | None  # set by gc when no manifest referenced the chunk


@dataclass(frozen=True)
class PackUsage:
    """A pack and how much of it the chunk index still points at."""

    pack: PackRecord
    created: float
    retired_at: float | None  # no chunk row points here any more; the blob goes after the grace
    live_chunks: int
    live_bytes: int  # record bytes of the chunk rows that point into the pack


@dataclass(frozen=True)
class ChunkMove:
    """A record copied by a repack: the row moves only if it still points at the old copy."""

    chunk_id: bytes
    old_pack_id: str
    old_offset: int
    location: ChunkLocation
