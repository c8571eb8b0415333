"""The metadata store interface that every implementation (SQLite now, sharded PostgreSQL
later) provides, and that the contract tests exercise.

Writes that make data visible (object versions, parts) take the :class:`StagedData` of the
ingest that produced them, and index its chunks and packs in the same transaction, so a
failure before the commit leaves nothing visible.
"""

from __future__ import annotations

from typing import Protocol

from crypto.kek import WrappedKey
from dedup.pack import ChunkLocation
from gateway.events import OutboxEvent
from gateway.meta.models import (
    AccessKey,
    Bucket,
    DeleteOutcome,
    ListedObject,
    MultipartUpload,
    ObjectVersion,
    PackRecord,
    Part,
    StagedData,
    User,
    WriteCondition,
)


class MetadataStore(Protocol):
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
    async def lookup_chunks(self, chunk_ids: list[bytes]) -> dict[bytes, ChunkLocation]: ...
    async def get_pack(self, pack_id: str) -> PackRecord | None: ...

    # event outbox
    async def read_outbox(self, after: int, limit: int) -> list[OutboxEvent]: ...
