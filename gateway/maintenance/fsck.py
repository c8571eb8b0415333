"""fsck: check that every manifest's chunks exist, decrypt and hash to their id; and rebuild
the chunk index from the pack trailers alone.

The checker trusts nothing the writer believed (restic's ``checker`` is the model):

1. Every object version and every part of an unfinished multipart upload is streamed from
   the metadata store, one page of manifests at a time (:func:`subjects`).
2. A page's chunk ids are grouped by tenant: the bucket owner, whose dedup key named them.
   Pairs checked earlier in the run are answered from the :class:`VerdictSet`; the others
   are looked up in the chunk index, grouped by pack, and read in runs of adjacent records
   (at most ``run_bytes`` per ranged read). Each record goes through
   :func:`dedup.open_record`, the read path's decoder (record header, AAD-bound chunk id,
   AES-GCM tag, zstd), and its plaintext is then re-hashed with the tenant's keyed BLAKE3,
   which the read path skips (:func:`verify_record`).
3. Each manifest that references a bad chunk is reported as broken, with the reason.

A tiny object's *inline* manifest (dedup/manifest.py, version 2) carries its one record and
the wrapped DEK that sealed it; that chunk is in no pack and not in the chunk index, so only
:attr:`~dedup.manifest.Manifest.indexed_ids` go through steps 2 and 3. The record itself is
checked like a pack record (:func:`verify_inline`): the DEK is unwrapped once per distinct
wrapped DEK (many objects share one; :class:`DekCache` keeps the recent ones), the record
opens as the read path opens it, and its plaintext re-hashes to the chunk id.

Verdicts live in a scratch SQLite file, so memory stays bounded by one page however many
chunks the store holds, and each (tenant, chunk) pair is read once per run. The check only
reads, so it is safe next to a live gateway: manifests committed after the scan passed them
are checked by the next run.

:func:`rebuild_index` lists the pack blobs in the backend, reads each one's header (for the
wrapped DEK) and trailer (for its chunks), and adds the missing pack and chunk rows. Rows
that exist are kept, so it is idempotent: an interrupted run is simply run again. It must
not run at the same time as garbage collection, which could delete a pack between the
trailer read and the row insert.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from crypto import CryptoError, IntegrityError, KEKProvider, Sealer, WrappedKey
from dedup import (
    HEADER_MAX,
    ChunkLocation,
    CorruptPackError,
    chunk_id,
    open_record,
    parse_footer,
    parse_header,
    parse_trailer_full,
)
from dedup.manifest import Manifest
from gateway.backends.base import BackendUnavailable, BlobBackend, pack_blob_name
from gateway.identity import Identities
from gateway.meta.models import MultipartUpload, NewChunk, ObjectVersion, PackRecord, Part, StagedData
from gateway.meta.store import MetadataStore

PAGE = 128  # manifests per metadata page
WINDOW = 4096  # chunk ids verified per step (bounds the ids and locations held at once)
TAIL_GUESS = 64 * 1024  # bytes fetched from a pack's end: the footer and, usually, the trailer
RESTORE_BATCH = 64  # packs per restore transaction
INLINE_DEKS = 1024  # unwrapped inline DEKs kept (LRU; versions come in key order, DEKs in runs)
BUCKET_GONE = "the object's bucket no longer exists, so its dedup key is unknown"

Problem = str | None  # None: the chunk is good
T = TypeVar("T")
C = TypeVar("C")


# -- what is checked -----------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One manifest to check: an object version, or a part of an unfinished upload."""

    bucket: str
    key: str
    ref: str  # the version id, or "upload U part N"
    tenant: str | None  # whose dedup key named the chunks; None if the bucket is gone
    manifest: Manifest

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key} ({self.ref})"


@dataclass(frozen=True)
class Broken:
    subject: Subject
    bad_chunks: int
    reason: str  # the first bad chunk and what is wrong with it

    def __str__(self) -> str:
        more = f" (and {self.bad_chunks - 1} more bad chunks)" if self.bad_chunks > 1 else ""
        return f"{self.subject}: {self.reason}{more}"


@dataclass
class FsckReport:
    """Running totals; complete after :meth:`Checker.run`, partial if it was interrupted."""

    manifests: int = 0
    chunks: int = 0  # distinct (tenant, chunk) pairs verified in packs
    inline: int = 0  # inline records verified (one per inline manifest)
    bad_chunks: int = 0  # bad pack chunks and bad inline records
    bytes_read: int = 0  # from the backend
    broken: int = 0

    def summary(self) -> str:
        return (
            f"{self.manifests:,} manifests, {self.chunks:,} chunks checked "
            f"({self.bytes_read:,} bytes read), {self.inline:,} inline records checked: "
            f"{self.broken:,} broken objects, {self.bad_chunks:,} bad chunks"
        )


async def pages(
    fetch: Callable[[C | None, int], Awaitable[list[T]]],
    cursor: Callable[[T], C],
    limit: int,
    after: C | None = None,
) -> AsyncIterator[list[T]]:
    """Keyset paging: call ``fetch(after, limit)`` until a short page, where ``after`` is the
    ``cursor`` of the previous page's last row (first: the one given, to resume a scan)."""
    while True:
        page = await fetch(after, limit)
        if page:
            yield page
        if len(page) < limit:
            return
        after = cursor(page[-1])


async def subjects(meta: MetadataStore, limit: int = PAGE) -> AsyncIterator[list[Subject]]:
    """Every object version (delete markers carry no data and are skipped), then every part
    of an unfinished multipart upload, one page at a time."""
    owners: dict[str, str | None] = {}  # pages come in bucket order: this stays tiny

    async def owner(bucket: str) -> str | None:
        if bucket not in owners:
            owners.clear()
            found = await meta.get_bucket(bucket)
            owners[bucket] = None if found is None else found.owner
        return owners[bucket]

    async for versions in pages(meta.scan_versions, version_cursor, limit):
        yield [
            Subject(v.bucket, v.key, v.version_id, await owner(v.bucket), v.manifest)
            for v in versions
            if not v.delete_marker
        ]
    async for parts in pages(meta.scan_parts, _part_cursor, limit):
        yield [
            Subject(u.bucket, u.key, f"upload {u.upload_id} part {p.part_number}", u.owner, p.manifest)
            for u, p in parts
        ]


def version_cursor(v: ObjectVersion) -> tuple[str, str, str]:
    """The keyset position of a version in :meth:`MetadataStore.scan_versions` order."""
    return v.bucket, v.key, v.version_id


def _part_cursor(row: tuple[MultipartUpload, Part]) -> tuple[str, int]:
    return row[0].upload_id, row[1].part_number


# -- verdicts ------------------------------------------------------------------------------


class VerdictSet:
    """(tenant, chunk id) -> problem or None, for every chunk checked in this run.

    A scratch SQLite file (not the metadata store: nothing here outlives the run), so a store
    with billions of chunks does not need billions of entries in memory.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (tenant TEXT NOT NULL, chunk_id BLOB NOT NULL, "
            "problem TEXT, PRIMARY KEY (tenant, chunk_id)) WITHOUT ROWID"
        )

    def known(self, tenant: str, ids: list[bytes]) -> dict[bytes, Problem]:
        found: dict[bytes, Problem] = {}
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            marks = ",".join("?" * len(batch))
            rows = self._conn.execute(
                f"SELECT chunk_id, problem FROM verdicts WHERE tenant=? AND chunk_id IN ({marks})",
                [tenant, *batch],
            )
            found.update(rows)
        return found

    def add(self, tenant: str, verdicts: dict[bytes, Problem]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO verdicts VALUES (?,?,?)", [(tenant, c, p) for c, p in verdicts.items()]
        )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VerdictSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DekCache:
    """Unwrapped DEKs by their wrapped form, for inline manifests (many objects share one
    wrapped DEK): each is unwrapped once while it stays among the ``size`` most recently used;
    one that does not unwrap is remembered with the reason. Scans meet versions in key order,
    and the DEKs of neighbouring versions are mostly the same, so a small cache suffices."""

    def __init__(self, kek: KEKProvider, size: int = INLINE_DEKS) -> None:
        self._kek = kek
        self._size = size
        self._deks: collections.OrderedDict[WrappedKey, Sealer | str] = collections.OrderedDict()
        self.unwrapped = 0  # unwrap calls made

    async def sealer(self, wrapped: WrappedKey) -> Sealer | str:
        """The sealer of the DEK ``wrapped`` wraps, or why it does not unwrap."""
        found = self._deks.get(wrapped)
        if found is not None:
            self._deks.move_to_end(wrapped)
            return found
        self.unwrapped += 1
        try:
            found = Sealer(await self._kek.unwrap(wrapped))
        except CryptoError as e:
            found = f"the inline DEK (KEK version {wrapped.kek_version}) does not unwrap ({e})"
        self._deks[wrapped] = found
        while len(self._deks) > self._size:
            self._deks.popitem(last=False)
        return found


# -- verifying records (pure) --------------------------------------------------------------


def verify_record(sealer: Sealer, record: memoryview, cid: bytes, dedup_key: bytes) -> Problem:
    """What is wrong with one stored record of chunk ``cid``, or None if it is good: it must
    open like the read path opens it, and its plaintext must hash to ``cid``."""
    try:
        plain = open_record(sealer, record, cid)
    except CorruptPackError as e:
        return f"record is malformed: {e}"
    except IntegrityError:
        return "record failed authentication (AES-GCM tag)"
    if chunk_id(dedup_key, plain) != cid:
        return "plaintext does not hash to the chunk id"
    return None


def verify_run(
    sealer: Sealer, blob: memoryview, base: int, run: list[tuple[bytes, ChunkLocation]], dedup_key: bytes
) -> list[Problem]:
    """:func:`verify_record` for each record of a run read from ``base`` in one pack."""
    return [
        verify_record(sealer, blob[loc.offset - base : loc.offset - base + loc.length], cid, dedup_key)
        for cid, loc in run
    ]


def plan_runs(
    items: Iterable[tuple[bytes, ChunkLocation]], run_bytes: int
) -> list[list[tuple[bytes, ChunkLocation]]]:
    """Records of one pack in offset order, grouped into runs of back-to-back records that
    one ranged read of at most ``run_bytes`` covers (a larger record is a run of its own)."""
    runs: list[list[tuple[bytes, ChunkLocation]]] = []
    size = 0
    for cid, loc in sorted(items, key=lambda item: item[1].offset):
        last = runs[-1][-1][1] if runs else None
        if last is None or loc.offset != last.offset + last.length or size + loc.length > run_bytes:
            runs.append([])
            size = 0
        runs[-1].append((cid, loc))
        size += loc.length
    return runs


def verify_inline(items: list[tuple[Sealer, bytes, bytes, bytes]]) -> list[Problem]:
    """:func:`verify_record` for each (sealer, record, chunk id, dedup key) of inline manifests."""
    return [verify_record(sealer, memoryview(record), cid, key) for sealer, record, cid, key in items]


def first_problem(manifest: Manifest, problems: dict[bytes, str]) -> tuple[int, str] | None:
    """(number of bad chunk references, the first one's reason) of a manifest's indexed
    chunks (those in packs), or None."""
    bad = [cid for cid in manifest.indexed_ids if cid in problems]
    if not bad:
        return None
    return len(bad), f"chunk {bad[0].hex()}: {problems[bad[0]]}"


# -- the checker ---------------------------------------------------------------------------


@dataclass
class Checker:
    """Checks every manifest against the backend. One instance per run."""

    meta: MetadataStore
    backend: BlobBackend
    kek: KEKProvider
    identities: Identities
    pool: Executor
    verdicts: VerdictSet
    run_bytes: int = 4 * 1024 * 1024
    parallel: int = 4  # packs read at once
    report: FsckReport = field(default_factory=FsckReport)

    on_progress: Callable[[FsckReport], None] = lambda report: None  # after each read and page
    inline_deks: DekCache = field(init=False, repr=False)  # of the inline manifests met

    def __post_init__(self) -> None:
        self.inline_deks = DekCache(self.kek)

    async def run(self, on_broken: Callable[[Broken], None]) -> FsckReport:
        """Check everything; ``on_broken`` is called for each broken manifest as it is found."""
        async for page in subjects(self.meta):
            for broken in await self.check_page(page):
                self.report.broken += 1
                on_broken(broken)
            self.report.manifests += len(page)
            self.on_progress(self.report)
        return self.report

    async def check_page(self, page: list[Subject]) -> list[Broken]:
        by_tenant: dict[str | None, set[bytes]] = {}
        for s in page:
            by_tenant.setdefault(s.tenant, set()).update(s.manifest.indexed_ids)
        problems: dict[str | None, dict[bytes, str]] = {}
        for tenant, ids in by_tenant.items():
            problems[tenant] = await self._tenant_problems(tenant, list(ids))
        inline = await self._inline_problems(page)
        out = []
        for i, s in enumerate(page):
            found = inline.get(i) or first_problem(s.manifest, problems[s.tenant])
            if found is not None:
                out.append(Broken(s, *found))
        return out

    async def _inline_problems(self, page: list[Subject]) -> dict[int, tuple[int, str]]:
        """(1, reason) for each inline manifest of ``page`` (by index) whose record is bad."""
        problems: dict[int, str] = {}
        todo: list[int] = []
        items: list[tuple[Sealer, bytes, bytes, bytes]] = []
        for i, s in enumerate(page):
            inline = s.manifest.inline
            if inline is None:
                continue
            self.report.inline += 1
            key = BUCKET_GONE if s.tenant is None else await self._dedup_key(s.tenant)
            sealer = await self.inline_deks.sealer(inline.wrapped_dek)
            if isinstance(key, str):
                problems[i] = key
            elif isinstance(sealer, str):
                problems[i] = sealer
            else:
                todo.append(i)
                items.append((sealer, inline.record, s.manifest.chunk_ids[0], key))
        if items:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self.pool, verify_inline, items)
            problems.update((i, p) for i, p in zip(todo, found, strict=True) if p is not None)
        self.report.bad_chunks += len(problems)
        return {
            i: (1, f"chunk {page[i].manifest.chunk_ids[0].hex()} (inline): {p}") for i, p in problems.items()
        }

    async def _dedup_key(self, tenant: str) -> bytes | str:
        """The tenant's dedup key, or why it cannot be had."""
        try:
            return await self.identities.dedup_key(tenant)
        except KeyError:
            return f"tenant {tenant!r} has no dedup key"
        except CryptoError as e:
            return f"tenant {tenant!r}: dedup key does not unwrap ({e})"

    async def _tenant_problems(self, tenant: str | None, ids: list[bytes]) -> dict[bytes, str]:
        if tenant is None:
            return dict.fromkeys(ids, BUCKET_GONE)
        problems: dict[bytes, str] = {}
        for start in range(0, len(ids), WINDOW):
            window = ids[start : start + WINDOW]
            verdicts = self.verdicts.known(tenant, window)
            todo = [cid for cid in window if cid not in verdicts]
            if todo:
                fresh = await self._verify(tenant, todo)
                self.verdicts.add(tenant, fresh)
                self.report.chunks += len(fresh)
                self.report.bad_chunks += sum(1 for p in fresh.values() if p is not None)
                verdicts.update(fresh)
            problems.update((cid, p) for cid, p in verdicts.items() if p is not None)
        return problems

    async def _verify(self, tenant: str, ids: list[bytes]) -> dict[bytes, Problem]:
        dedup_key = await self._dedup_key(tenant)
        if isinstance(dedup_key, str):
            return dict.fromkeys(ids, dedup_key)
        locations = await self.meta.lookup_chunks(ids)
        out: dict[bytes, Problem] = {cid: "not in the chunk index" for cid in ids if cid not in locations}
        by_pack: dict[str, list[tuple[bytes, ChunkLocation]]] = {}
        for cid, loc in locations.items():
            by_pack.setdefault(loc.pack_id, []).append((cid, loc))
        gate = asyncio.Semaphore(self.parallel)

        async def one(pack_id: str, items: list[tuple[bytes, ChunkLocation]]) -> None:
            async with gate:
                out.update(await self._verify_pack(pack_id, items, dedup_key))

        await asyncio.gather(*(one(p, items) for p, items in by_pack.items()))
        return out

    async def _verify_pack(
        self, pack_id: str, items: list[tuple[bytes, ChunkLocation]], dedup_key: bytes
    ) -> dict[bytes, Problem]:
        def all_bad(problem: str) -> dict[bytes, Problem]:
            return {cid: problem for cid, _ in items}

        record = await self.meta.get_pack(pack_id)
        if record is None:
            return all_bad(f"pack {pack_id} is not in the metadata store")
        try:
            sealer = Sealer(await self.kek.unwrap(record.wrapped_dek))
        except CryptoError as e:
            return all_bad(f"the DEK of pack {pack_id} does not unwrap ({e})")
        out: dict[bytes, Problem] = {}
        loop = asyncio.get_running_loop()
        name = pack_blob_name(pack_id)
        for run in plan_runs(items, self.run_bytes):
            first, last = run[0][1], run[-1][1]
            length = last.offset + last.length - first.offset
            try:
                blob = await self.backend.read_range(name, first.offset, length)
            except BackendUnavailable:
                raise
            except FileNotFoundError:
                return all_bad(f"pack {pack_id} is missing from the backend")
            except Exception as e:  # a short read, an S3 error: this pack is unreadable
                out.update((cid, f"pack {pack_id} could not be read ({e})") for cid, _ in run)
                continue
            self.report.bytes_read += len(blob)
            self.on_progress(self.report)
            found = await loop.run_in_executor(
                self.pool, verify_run, sealer, memoryview(blob), first.offset, run, dedup_key
            )
            out.update((cid, p) for (cid, _), p in zip(run, found, strict=True))
        return out


# -- rebuilding the chunk index ------------------------------------------------------------


@dataclass
class RebuildReport:
    packs_seen: int = 0
    packs_added: int = 0
    chunks_seen: int = 0
    chunks_added: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (blob name, reason)

    def summary(self) -> str:
        return (
            f"{self.packs_seen:,} packs read, {self.chunks_seen:,} chunks listed: "
            f"{self.packs_added:,} pack rows and {self.chunks_added:,} chunk rows added, "
            f"{len(self.damaged):,} damaged packs"
        )


def pack_id_of(name: str) -> str | None:
    """The pack id of blob ``name`` if it is where :func:`pack_blob_name` puts a pack."""
    if not name.endswith(".pack"):
        return None
    pack_id = name.rsplit("/", 1)[-1][: -len(".pack")]
    return pack_id if pack_id and pack_blob_name(pack_id) == name else None


async def read_pack_index(backend: BlobBackend, pack_id: str) -> StagedData:
    """The pack row (from the header: the wrapped DEK) and chunk rows (from the trailer) of
    one pack, reading only its head and tail. Raises :class:`CorruptPackError` if they do not
    agree with each other, with the blob's name, or with its size."""
    name = pack_blob_name(pack_id)
    size = await backend.size(name)
    header = parse_header(await backend.read_range(name, 0, min(HEADER_MAX, size)))
    tail_len = min(TAIL_GUESS, size)
    tail = await backend.read_range(name, size - tail_len, tail_len)
    trailer_len = parse_footer(tail)
    if trailer_len > tail_len:
        if trailer_len > size:
            raise CorruptPackError(f"trailer length {trailer_len} exceeds the pack size {size}")
        tail = await backend.read_range(name, size - trailer_len, trailer_len)
    trailer = parse_trailer_full(tail)
    if header.pack_id != pack_id or trailer.pack_id != pack_id:
        raise CorruptPackError(f"header/trailer name packs {header.pack_id!r}/{trailer.pack_id!r}")
    if trailer.header_len != header.header_len or trailer.records_end + trailer.trailer_len != size:
        raise CorruptPackError("trailer does not match the header or the pack size")
    return StagedData(
        packs=[PackRecord(pack_id, header.wrapped_dek, size)],
        chunks=[NewChunk(e.chunk_id, e.location) for e in trailer.chunks],
    )


async def rebuild_index(
    backend: BlobBackend,
    meta: MetadataStore,
    on_pack: Callable[[str, str | None], None] = lambda name, problem: None,
    report: RebuildReport | None = None,
) -> RebuildReport:
    """Add the chunk and pack rows recorded in every pack's header and trailer that the
    metadata store lacks. ``on_pack(name, problem)`` is called after each pack blob; the
    totals accumulate in ``report`` (a new one by default)."""
    report = RebuildReport() if report is None else report
    pending: list[StagedData] = []

    async def flush() -> None:
        if pending:
            merged = StagedData([p for s in pending for p in s.packs], [c for s in pending for c in s.chunks])
            packs, chunks = await meta.restore_index(merged)
            report.packs_added += packs
            report.chunks_added += chunks
            pending.clear()

    async for name in backend.list("packs/"):
        pack_id = pack_id_of(name)
        if pack_id is None:
            continue
        try:
            staged = await read_pack_index(backend, pack_id)
        except BackendUnavailable:
            raise
        except (CorruptPackError, OSError) as e:
            report.damaged.append((name, str(e)))
            on_pack(name, str(e))
            continue
        report.packs_seen += 1
        report.chunks_seen += len(staged.chunks)
        pending.append(staged)
        if len(pending) >= RESTORE_BATCH:
            await flush()
        on_pack(name, None)
    await flush()
    return report
