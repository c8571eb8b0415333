"""How object versions and multipart uploads are laid out as table rows: the column lists
and the conversions both ways, shared by the SQLite and PostgreSQL stores (same columns,
same JSON-in-text encoding, same order)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dedup.manifest import Manifest
from gateway.meta.models import MultipartUpload, ObjectVersion

# Selected as f"{OBJECT_COLUMNS}, latest" and read back with :func:`version_from_row`.
OBJECT_COLUMNS = (
    "bucket, key, version_id, size, etag, last_modified, manifest, content_type, headers, "
    "user_meta, checksum, parts, storage_class, delete_marker, tags"
)
UPLOAD_COLUMNS = (
    "upload_id, bucket, key, initiated, owner, content_type, headers, user_meta, "
    "checksum_algorithm, checksum_type, tags"
)


def _text(d: dict[str, Any]) -> str:
    """``d`` as JSON text. Most are empty, and ``json.dumps({})`` costs ~1.8 us (``json.loads``
    of it ~1.3 us) on every version written or read."""
    return json.dumps(d) if d else "{}"


def _dict(text: str) -> dict[str, Any]:
    """The inverse of :func:`_text` (a fresh dict every time: records are not shared)."""
    return {} if text == "{}" else json.loads(text)


def version_values(v: ObjectVersion) -> tuple[Any, ...]:
    """The values of :data:`OBJECT_COLUMNS` for ``v``."""
    return (
        v.bucket, v.key, v.version_id, v.size, v.etag, v.last_modified, v.manifest.encode(),
        v.content_type, _text(v.headers), _text(v.user_meta), _text(v.checksum),
        v.parts, v.storage_class, v.delete_marker, _text(v.tags),
    )  # fmt: skip


def version_from_row(row: Sequence[Any]) -> ObjectVersion:
    """A version from the values of :data:`OBJECT_COLUMNS` followed by ``latest``."""
    return ObjectVersion(
        bucket=row[0],
        key=row[1],
        version_id=row[2],
        size=row[3],
        etag=row[4],
        last_modified=row[5],
        manifest=Manifest.decode(row[6]),
        content_type=row[7],
        headers=_dict(row[8]),
        user_meta=_dict(row[9]),
        checksum=_dict(row[10]),
        parts=row[11],
        storage_class=row[12],
        delete_marker=bool(row[13]),
        tags=_dict(row[14]),
        is_latest=bool(row[15]),
    )


def upload_values(u: MultipartUpload) -> tuple[Any, ...]:
    """The values of :data:`UPLOAD_COLUMNS` for ``u``."""
    return (
        u.upload_id, u.bucket, u.key, u.initiated, u.owner, u.content_type, _text(u.headers),
        _text(u.user_meta), u.checksum_algorithm, u.checksum_type, _text(u.tags),
    )  # fmt: skip


def upload_from_row(row: Sequence[Any]) -> MultipartUpload:
    """An upload from a row that starts with the values of :data:`UPLOAD_COLUMNS`."""
    return MultipartUpload(
        row[0], row[1], row[2], row[3], row[4], row[5], _dict(row[6]), _dict(row[7]),
        row[8], row[9], _dict(row[10]),
    )  # fmt: skip
