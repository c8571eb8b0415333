"""Rewriting packs: copy the records the chunk index still points at into new packs under
fresh DEKs, repoint the chunk rows, and retire the old packs.

One piece of code serves both jobs that rewrite data:

* **repack** (``strata gc``): packs whose live share fell below ``gc.repack_threshold``;
  several sparse packs are merged into one full pack;
* **re-encryption** (``strata keys reencrypt``): every pack, after a suspected DEK leak.

Records are *re-sealed*, never re-compressed: each record's payload (the zstd frame or raw
bytes) is opened with the old pack's DEK and sealed again under the new pack's DEK with a
fresh nonce and the same 48-byte record header as AAD (docs/format.md). Copying sealed
records verbatim under the old wrapped DEK would also be readable (the AAD does not bind the
pack), but it would break "one DEK per pack", could not merge packs with different DEKs, and
would be useless against a leaked DEK; AES-GCM at a few GB/s makes re-sealing cheap.

Safety against a live gateway, in order:

1. the new pack is written and committed to the backend first (unindexed: if the job dies
   here, gc deletes it as an orphan after the grace period);
2. one metadata transaction inserts the new pack's row and moves each chunk row *only if it
   still points at the record that was copied* (rows swept or replaced meanwhile stay put);
3. a source pack is retired only once no chunk row points into it (re-checked in the
   retiring transaction); its blob is deleted by gc after another grace period, so a reader
   that resolved a location just before the move still finds the bytes.

A record that fails to open (corrupt, tampered) is left where it is and counted: its pack
then keeps a row and is never retired, so a repack never loses data it could not copy.
Memory is bounded by one read run (``storage.read_run``) plus one output pack's row moves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from crypto import CryptoError, KEKProvider, Sealer
from crypto.envelope import NONCE_LEN
from dedup import CorruptPackError, SealedChunk
from dedup.pack import RECORD_HEADER_LEN, parse_record_header
from gateway.backends.base import BlobBackend, pack_blob_name
from gateway.config import StorageConfig
from gateway.meta.models import ChunkMove, NewChunk, PackRecord
from gateway.meta.store import MaintenanceStore
from gateway.packs import OpenPack

ROW_PAGE = 1024  # chunk rows of one source pack fetched at a time
RUN_GAP = 256 * 1024  # dead bytes a run may read through to keep live records in one read


@dataclass
class RewriteReport:
    sources: int = 0  # packs whose live records were copied
    retired: int = 0  # source packs retired (no chunk row left in them)
    packs_written: int = 0
    bytes_written: int = 0  # size of the new packs
    records: int = 0  # records copied
    moved: int = 0  # chunk rows repointed
    damaged: list[str] = field(default_factory=list)  # "pack/offset: reason" of records left behind


def reseal_record(old: Sealer, new: Sealer, record: memoryview, chunk_id: bytes) -> SealedChunk:
    """The record ``chunk_id`` sealed under ``old``, sealed again under ``new`` with a fresh
    nonce; the header (the AAD) and the payload (compressed or not) stay as they are. Raises
    :class:`CorruptPackError` or :class:`~crypto.errors.IntegrityError` like ``open_record``."""
    hdr = parse_record_header(record)
    if record.nbytes != hdr.record_len or hdr.chunk_id != chunk_id:
        raise CorruptPackError(f"record of chunk {chunk_id.hex()} has another length or id")
    aad = record[:RECORD_HEADER_LEN]
    body = RECORD_HEADER_LEN + NONCE_LEN
    payload = old.open_parts(record[RECORD_HEADER_LEN:body], record[body:], aad)
    return SealedChunk(chunk_id, new.seal_framed(aad, payload, aad), hdr.plain_len, hdr.flags)


def reseal_run(
    old: Sealer, new: Sealer, blob: memoryview, base: int, rows: list[NewChunk]
) -> list[SealedChunk | str]:
    """:func:`reseal_record` for each row of a run read from ``base``; a failure becomes its reason."""
    out: list[SealedChunk | str] = []
    for row in rows:
        start = row.location.offset - base
        try:
            out.append(reseal_record(old, new, blob[start : start + row.location.length], row.chunk_id))
        except (CorruptPackError, CryptoError) as exc:
            out.append(str(exc))
    return out


def runs(rows: list[NewChunk], run_bytes: int, gap: int = RUN_GAP) -> list[list[NewChunk]]:
    """Group rows (sorted by offset) into runs read with one ranged read each: a run spans
    at most ``run_bytes`` (or one record) and skips at most ``gap`` bytes between records."""
    out: list[list[NewChunk]] = []
    for row in rows:
        loc = row.location
        if out:
            first, last = out[-1][0].location, out[-1][-1].location
            end = last.offset + last.length
            if end <= loc.offset <= end + gap and loc.offset + loc.length - first.offset <= run_bytes:
                out[-1].append(row)
                continue
        out.append([row])
    return out


class PackRewriter:
    """Streams the live records of source packs into new packs (see the module docstring).

    Call :meth:`rewrite` for each source pack, then :meth:`finish` (also after an error, to
    publish what was copied so far).
    """

    def __init__(
        self,
        meta: MaintenanceStore,
        backend: BlobBackend,
        kek: KEKProvider,
        pool: Executor,
        storage: StorageConfig,
        report: RewriteReport | None = None,
        on_record: Callable[[int], None] = lambda nbytes: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.backend = backend
        self.kek = kek
        self.pool = pool
        self.storage = storage
        self.report = RewriteReport() if report is None else report
        self._on_record = on_record
        self._clock = clock
        self._out: OpenPack | None = None
        self._moves: list[ChunkMove] = []
        self._done: list[str] = []  # sources fully copied into the open or earlier output packs

    async def rewrite(self, source: PackRecord) -> None:
        """Copy every record the chunk index points at in ``source`` into the output packs."""
        old = Sealer(await self.kek.unwrap(source.wrapped_dek))
        name = pack_blob_name(source.pack_id)
        after = -1
        while rows := await self.meta.pack_chunks(source.pack_id, after, ROW_PAGE):
            after = rows[-1].location.offset
            for run in runs(rows, self.storage.read_run):
                await self._copy(old, name, run, source.pack_id)
        self.report.sources += 1
        self._done.append(source.pack_id)

    async def _copy(self, old: Sealer, name: str, run: list[NewChunk], source: str) -> None:
        out = self._out or await self._open()
        base = run[0].location.offset
        span = run[-1].location.offset + run[-1].location.length - base
        blob = memoryview(await self.backend.read_range(name, base, span))
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.pool, reseal_run, old, out.sealer, blob, base, run)
        sealed = [r for r in results if isinstance(r, SealedChunk)]
        copied = [row for row, r in zip(run, results, strict=True) if isinstance(r, SealedChunk)]
        for row, r in zip(run, results, strict=True):
            if isinstance(r, str):
                self.report.damaged.append(f"{source}@{row.location.offset}: {r}")
        if not sealed:
            return
        placed = await out.append(sealed)
        self._moves += [
            ChunkMove(row.chunk_id, source, row.location.offset, new.location)
            for row, new in zip(copied, placed, strict=True)
        ]
        self.report.records += len(sealed)
        self._on_record(span)
        if out.size >= self.storage.pack_target:
            await self._publish()

    async def _open(self) -> OpenPack:
        self._out = await OpenPack.create(self.backend, self.kek)
        return self._out

    async def _publish(self) -> None:
        """Commit the open output pack, move the rows into it, retire the finished sources."""
        out, self._out = self._out, None
        if out is not None:
            record = await out.close()  # a failed close aborts the pack itself
            self.report.packs_written += 1
            self.report.bytes_written += record.size
            self.report.moved += await self.meta.repoint_chunks(record, self._moves)
            self._moves = []
        if self._done:
            retired = await self.meta.retire_packs(self._done, self._clock())
            self.report.retired += len(retired)
            self._done = []

    async def finish(self) -> None:
        """Publish the last output pack and retire the sources copied so far."""
        if self._out is not None and not self._moves:  # nothing was copied into it
            out, self._out = self._out, None
            await out.abort()
        await self._publish()

    async def abort(self) -> None:
        """Drop the open output pack unpublished (after an error or an interrupt): its rows
        were never moved, so its sources keep serving every read."""
        out, self._out = self._out, None
        self._moves = []
        self._done = []
        if out is not None:
            await out.abort()
