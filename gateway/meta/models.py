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
