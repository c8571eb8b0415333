"""``strata fsck`` and ``strata stats`` as operators run them: subprocesses pointed at the
data dir of a gateway that keeps serving, with the data uploaded through S3 (objects of at
most ``storage.inline_max`` bytes are sealed into their manifest, the others go to packs)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from support.s3 import make_client
from support.server import REPO_ROOT, StrataServer

from dedup.manifest import Manifest
from gateway.backends.base import pack_blob_name

MiB = 1024 * 1024


def strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def broken_names(out: str) -> set[str]:
    """The ``bucket/key (ref)`` of each line fsck printed."""
    return {line.split(": ", 1)[0] for line in out.splitlines() if line}


def meta_rows(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "meta.sqlite") as c:
        return c.execute(sql, params).fetchall()


def current_manifest(data_dir: Path, bucket: str, key: str) -> Manifest:
    ((blob,),) = meta_rows(
        data_dir, "SELECT manifest FROM objects WHERE bucket=? AND key=? AND latest=1", bucket, key
    )
    return Manifest.decode(blob)


def chunk_location(data_dir: Path, bucket: str, key: str, index: int) -> tuple[bytes, str, int, int]:
    """(chunk id, pack id, offset, length) of chunk ``index`` of the current version."""
    cid = current_manifest(data_dir, bucket, key).chunk_ids[index]
    ((pack, offset, length),) = meta_rows(
        data_dir, "SELECT pack_id, offset, length FROM chunks WHERE chunk_id=?", cid
    )
    return cid, pack, offset, length


@pytest.fixture
def server(strata_factory: Callable[..., StrataServer]) -> StrataServer:
    return strata_factory()


def test_fsck_names_exactly_the_objects_sharing_a_damaged_chunk(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="photos")
    s3.put_bucket_versioning(Bucket="photos", VersioningConfiguration={"Status": "Enabled"})
    shared = os.urandom(3 * MiB)
    v1 = s3.put_object(Bucket="photos", Key="a.bin", Body=shared)["VersionId"]
    s3.put_object(Bucket="photos", Key="a.bin", Body=os.urandom(MiB))  # a.bin's current version is fine
    v_copy = s3.put_object(Bucket="photos", Key="copy.bin", Body=shared)["VersionId"]  # dedups on a.bin v1
    v_other = s3.put_object(Bucket="photos", Key="other.bin", Body=os.urandom(2 * MiB))["VersionId"]
    s3.put_object(Bucket="photos", Key="small.txt", Body=b"tiny object")
    upload = s3.create_multipart_upload(Bucket="photos", Key="mp.bin")["UploadId"]
    s3.upload_part(Bucket="photos", Key="mp.bin", UploadId=upload, PartNumber=1, Body=shared)  # unfinished

    clean = strata("fsck", "--data-dir", str(server.data_dir))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == "" and "0 broken" in clean.stderr

    # Flip one byte inside a record of copy.bin's first chunk (past its 48-byte header).
    cid, pack, offset, length = chunk_location(server.data_dir, "photos", "copy.bin", 0)
    path = server.blobs_dir / pack_blob_name(pack)
    with open(path, "r+b") as fh:
        fh.seek(offset + length // 2)
        byte = fh.read(1)
        fh.seek(offset + length // 2)
        fh.write(bytes([byte[0] ^ 0x40]))

    run = strata("fsck", "--data-dir", str(server.data_dir))
    assert run.returncode == 1, run.stderr
    assert broken_names(run.stdout) == {
        f"photos/a.bin ({v1})",
        f"photos/copy.bin ({v_copy})",
        f"photos/mp.bin (upload {upload} part 1)",
    }
    assert all(cid.hex() in line and "authentication" in line for line in run.stdout.splitlines())
    assert "3 broken objects, 1 bad chunks" in run.stderr
    # fsck only read: the gateway still serves the undamaged objects.
    body = s3.get_object(Bucket="photos", Key="other.bin", VersionId=v_other)["Body"].read()
    assert len(body) == 2 * MiB


def flip_inline_record_byte(data_dir: Path, bucket: str, key: str, version_id: str) -> bytes:
    """Flip one byte of the ciphertext of the record sealed in a version's manifest (the
    ``manifest`` blob of its ``objects`` row); returns the chunk id."""
    where = "bucket=? AND key=? AND version_id=?"
    ((blob,),) = meta_rows(data_dir, f"SELECT manifest FROM objects WHERE {where}", bucket, key, version_id)
    manifest = Manifest.decode(blob)
    assert manifest.inline is not None
    data = bytearray(blob)
    data[len(blob) - len(manifest.inline.record) + 48 + 12 + 1] ^= 0x20  # past the header and nonce
    with sqlite3.connect(data_dir / "meta.sqlite") as c:
        c.execute(f"UPDATE objects SET manifest=? WHERE {where}", (bytes(data), bucket, key, version_id))
    return manifest.chunk_ids[0]


def test_fsck_checks_inline_objects_and_names_the_one_with_a_flipped_byte(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="tiny")
    s3.put_bucket_versioning(Bucket="tiny", VersioningConfiguration={"Status": "Enabled"})
    bodies = {"a.txt": b"hello inline", "b.bin": os.urandom(4000), "c.bin": os.urandom(16 * 1024)}
    versions = {
        key: s3.put_object(Bucket="tiny", Key=key, Body=body)["VersionId"] for key, body in bodies.items()
    }
    s3.put_object(Bucket="tiny", Key="b.bin", Body=os.urandom(900))  # b.bin v1 is now noncurrent
    s3.put_object(Bucket="tiny", Key="big.bin", Body=os.urandom(2 * MiB))  # in a pack
    assert current_manifest(server.data_dir, "tiny", "a.txt").inline is not None
    assert current_manifest(server.data_dir, "tiny", "big.bin").inline is None

    clean = strata("fsck", "--data-dir", str(server.data_dir))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == "" and "4 inline records checked: 0 broken objects" in clean.stderr

    cid = flip_inline_record_byte(server.data_dir, "tiny", "b.bin", versions["b.bin"])
    run = strata("fsck", "--data-dir", str(server.data_dir))
    assert run.returncode == 1, run.stderr
    assert broken_names(run.stdout) == {f"tiny/b.bin ({versions['b.bin']})"}
    assert f"chunk {cid.hex()} (inline): record failed authentication (AES-GCM tag)" in run.stdout
    assert "1 broken objects, 1 bad chunks" in run.stderr
    for key in ("a.txt", "c.bin"):  # fsck only read: the others still serve
        assert s3.get_object(Bucket="tiny", Key=key)["Body"].read() == bodies[key]


def test_fsck_names_the_objects_of_a_deleted_pack(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="docs")
    for key in ("gone.bin", "kept.bin"):
        s3.put_object(Bucket="docs", Key=key, Body=os.urandom(2 * MiB))  # each in its own pack
    _cid, pack, _off, _len = chunk_location(server.data_dir, "docs", "gone.bin", 0)
    (server.blobs_dir / pack_blob_name(pack)).unlink()
    run = strata("fsck", "--data-dir", str(server.data_dir))
    assert run.returncode == 1
    assert broken_names(run.stdout) == {"docs/gone.bin (null)"}
    assert f"pack {pack} is missing from the backend" in run.stdout


def test_rebuild_index_brings_back_every_object_byte_exact(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="vault")
    bodies = {
        "big.bin": os.urandom(6 * MiB),
        "text.log": b"".join(b"line %d of a log file\n" % i for i in range(200_000)),
        "small-1": os.urandom(10_000),  # inline: no pack, no chunk row
        "small-2": b"hello",
    }
    for key, body in bodies.items():
        s3.put_object(Bucket="vault", Key=key, Body=body)
    assert all(
        current_manifest(server.data_dir, "vault", k).inline is not None for k in ("small-1", "small-2")
    )
    mp = s3.create_multipart_upload(Bucket="vault", Key="multi.bin")["UploadId"]
    parts = [os.urandom(5 * MiB), os.urandom(MiB)]
    etags = [
        s3.upload_part(Bucket="vault", Key="multi.bin", UploadId=mp, PartNumber=n, Body=b)["ETag"]
        for n, b in enumerate(parts, 1)
    ]
    s3.complete_multipart_upload(
        Bucket="vault",
        Key="multi.bin",
        UploadId=mp,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    bodies["multi.bin"] = b"".join(parts)
    before = meta_rows(
        server.data_dir, "SELECT chunk_id, pack_id, offset, length, plain_len, flags FROM chunks"
    )

    with sqlite3.connect(
        server.data_dir / "meta.sqlite"
    ) as c:  # lose the chunk index (the gateway keeps running)
        c.execute("DELETE FROM chunks")
    # The read fails (the gateway has sent its headers by then, so the client may only see the
    # body stall: a short read timeout keeps that quick).
    with pytest.raises((ClientError, BotoCoreError)):
        make_client(server, read_timeout=5).get_object(Bucket="vault", Key="big.bin")["Body"].read()
    assert strata("fsck", "--data-dir", str(server.data_dir)).returncode == 1

    rebuilt = strata("fsck", "--rebuild-index", "--data-dir", str(server.data_dir))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{len(before):,} chunk rows added" in rebuilt.stderr
    after = meta_rows(
        server.data_dir, "SELECT chunk_id, pack_id, offset, length, plain_len, flags FROM chunks"
    )
    assert sorted(after) == sorted(before)
    for key, body in bodies.items():  # the inline objects too: the rebuild left them alone
        got = s3.get_object(Bucket="vault", Key=key)["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest(), key
    assert all(
        current_manifest(server.data_dir, "vault", k).inline is not None for k in ("small-1", "small-2")
    )
    again = strata("fsck", "--rebuild-index", "--data-dir", str(server.data_dir))
    assert again.returncode == 0 and "0 chunk rows added" in again.stderr
    assert strata("fsck", "--data-dir", str(server.data_dir)).returncode == 0


def test_stats_dedup_ratio_of_three_copies(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="copies")
    body = os.urandom(5 * MiB)
    for i in range(3):
        s3.put_object(Bucket="copies", Key=f"copy-{i}", Body=body)
    run = strata("stats", "--json", "--data-dir", str(server.data_dir))
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats["objects"] == 3 and stats["versions"] == 3
    assert stats["logical_bytes"] == 15 * MiB and stats["unique_bytes"] == 5 * MiB
    assert 2.9 <= stats["dedup_ratio"] <= 3.1
    assert stats["compression_ratio"] <= 1.0  # random bytes do not compress
    assert stats["physical_bytes"] >= stats["stored_bytes"] >= 5 * MiB
    assert stats["bytes_by_tier"] == {"STANDARD": 15 * MiB}
    table = strata("stats", "--data-dir", str(server.data_dir))
    assert table.returncode == 0 and "dedup ratio" in table.stdout and "3.00x" in table.stdout


def test_stats_compression_ratio_of_repetitive_text(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="logs")
    text = b"".join(
        b"2026-01-01T00:00:%02d INFO request served in %d ms\n" % (i % 60, i % 997) for i in range(100_000)
    )
    s3.put_object(Bucket="logs", Key="app.log", Body=text)
    s3.delete_object(Bucket="logs", Key="app.log")  # unversioned: gone
    s3.put_object(Bucket="logs", Key="app.log", Body=text)
    stats = json.loads(strata("stats", "--json", "--data-dir", str(server.data_dir)).stdout)
    assert stats["objects"] == 1 and stats["logical_bytes"] == len(text)
    assert stats["compression_ratio"] > 2


def test_stats_count_inline_objects_apart_and_in_physical_bytes(server: StrataServer) -> None:
    s3 = make_client(server)
    s3.create_bucket(Bucket="mixed")
    s3.put_object(Bucket="mixed", Key="big", Body=os.urandom(5 * MiB))
    for i in range(3):
        s3.put_object(Bucket="mixed", Key=f"tiny-{i}", Body=os.urandom(1000))
    stats = json.loads(strata("stats", "--json", "--data-dir", str(server.data_dir)).stdout)
    manifests = [current_manifest(server.data_dir, "mixed", f"tiny-{i}") for i in range(3)]
    assert stats["objects"] == 4 and stats["inline_versions"] == 3
    assert stats["inline_bytes"] == sum(len(m.encode()) for m in manifests) > 3000
    assert stats["physical_bytes"] == stats["pack_bytes"] + stats["inline_bytes"]
    assert stats["unique_bytes"] == 5 * MiB + 3000 and stats["dedup_ratio"] == 1.0
    table = strata("stats", "--data-dir", str(server.data_dir))
    assert table.returncode == 0
    assert re.search(r"inline bytes +\S+ \S+ \(\d[\d,]* bytes\) in 3 manifests", table.stdout), table.stdout


def test_commands_refuse_a_data_dir_without_a_store(tmp_path: Path) -> None:
    for cmd in (["fsck"], ["fsck", "--rebuild-index"], ["stats"]):
        run = strata(*cmd, "--data-dir", str(tmp_path / "nothing"))
        assert run.returncode == 2 and "meta.sqlite is missing" in run.stderr
    assert not (tmp_path / "nothing").exists()
