"""Pack format: sealing chunks into records, and writing and parsing packs.

This module owns the byte layout of a pack and of the records in it (docs/format.md has
the tables). It does no I/O: :class:`PackWriter` produces the bytes to append, and the
``parse_*`` functions read bytes the caller fetched. All integers are little-endian.

A pack is::

    header | record | record | ... | trailer (body + fixed-size footer)

* header: ``PACK_MAGIC``, version, pack id, the pack's DEK wrapped by a KEK version, xxh64;
* record: 48-byte header (``RECORD_MAGIC``, version, flags, chunk id, plain length, sealed
  length) followed by ``nonce || AES-256-GCM(payload) || tag``. The 48-byte record header
  is the GCM AAD, so the chunk id, lengths and flags cannot be altered or a record moved
  under another id. The payload is the zstd frame (flag bit 0 set) or the raw plaintext;
* trailer: every record's ``(chunk id, offset, length, plain_len, flags)`` plus a footer
  ``trailer_len | version | xxh64 | TRAILER_MAGIC`` that a reader finds from the end.

One DEK per pack: records are sealed with the pack's :class:`~crypto.envelope.Sealer`
before :meth:`PackWriter.add` places them, so a record copied into another pack does not
decrypt. Every parser validates magic, version, lengths and checksums and raises
:class:`~dedup.errors.CorruptPackError` (never ``IndexError``/``struct.error``).
"""

from __future__ import annotations

import re
import secrets
import struct
import threading
from dataclasses import dataclass

import xxhash
import zstandard

from crypto.envelope import NONCE_LEN, SEAL_OVERHEAD, Sealer
from crypto.errors import IntegrityError
from crypto.kek import WrappedKey
from dedup.chunkid import CHUNK_ID_LEN
from dedup.errors import CorruptPackError

Buffer = bytes | bytearray | memoryview

# -- constants -----------------------------------------------------------------------------

PACK_MAGIC = b"STRPACK\x00"
RECORD_MAGIC = b"SREC"
TRAILER_MAGIC = b"STRTRAIL"
FORMAT_VERSION = 1  # major version of pack header, record, trailer and footer
FORMAT_MINOR = 0  # written; readers accept any minor of a known major

PACK_TARGET_SIZE = 16 * 1024 * 1024

FLAG_ZSTD = 0x01  # record payload is one zstd frame; else the raw plaintext
KNOWN_FLAGS = FLAG_ZSTD

MAX_PACK_ID_LEN = 64
MAX_KEK_ID_LEN = 1024
MAX_WRAPPED_DEK_LEN = 2048
HEADER_MAX = 4096  # bytes a reader must fetch from the start to be sure it has the header
MAX_PLAIN_LEN = 0xFFFFFFFF - SEAL_OVERHEAD

# header: magic, major, minor, reserved, header_len; then variable fields; then xxh64
_HEADER_FIXED = struct.Struct("<8sBBHI")
_CHECKSUM = struct.Struct("<Q")
_HEADER_MIN = _HEADER_FIXED.size + 1 + 1 + 2 + 4 + 2 + _CHECKSUM.size

# record header: magic, version, flags, reserved, chunk_id, plain_len, sealed_len
_RECORD = struct.Struct("<4sBBH32sII")
RECORD_HEADER_LEN = _RECORD.size  # 48
RECORD_OVERHEAD = RECORD_HEADER_LEN + SEAL_OVERHEAD  # 76

# trailer body: magic, major, minor, reserved, header_len, records_end, count, pack_id_len
_TRAILER_FIXED = struct.Struct("<8sBBHIQIB")
_ENTRY = struct.Struct("<32sQIIB3x")  # chunk_id, offset, length, plain_len, flags
# footer: trailer_len (body + footer), major, reserved, xxh64(body || footer[:8]), magic
_FOOTER = struct.Struct("<IB3xQ8s")
FOOTER_LEN = _FOOTER.size  # 24
_TRAILER_MIN = _TRAILER_FIXED.size + 1 + FOOTER_LEN

_PACK_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_PACK_ID_LEN}}}")

# Compression policy: keep zstd output only if it saves at least 10%.
_SAMPLE_SLICES = 4
_SAMPLE_SLICE_LEN = 16 * 1024
_SAMPLE_MIN_CHUNK = 4 * _SAMPLE_SLICES * _SAMPLE_SLICE_LEN  # below this, compress the whole chunk
_MIN_COMPRESS_LEN = 64


def _worth_it(compressed_len: int, plain_len: int) -> bool:
    return compressed_len * 10 <= plain_len * 9


# -- data classes --------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedChunk:
    """A chunk sealed into a record, ready to be appended to the pack whose DEK sealed it."""

    chunk_id: bytes
    record: bytes | bytearray  # full record: 48-byte header + nonce + ciphertext + tag
    plain_len: int
    flags: int


@dataclass(frozen=True)
class ChunkLocation:
    """Where a record lives: ``length`` bytes at ``offset`` in pack ``pack_id``."""

    pack_id: str
    offset: int
    length: int
    plain_len: int
    flags: int


@dataclass(frozen=True)
class TrailerEntry(ChunkLocation):
    """A trailer row: a :class:`ChunkLocation` plus the id of the chunk stored there."""

    chunk_id: bytes

    @property
    def location(self) -> ChunkLocation:
        return ChunkLocation(self.pack_id, self.offset, self.length, self.plain_len, self.flags)


@dataclass(frozen=True)
class PackHeader:
    pack_id: str
    wrapped_dek: WrappedKey
    header_len: int  # records start here


@dataclass(frozen=True)
class RecordHeader:
    chunk_id: bytes
    flags: int
    plain_len: int
    sealed_len: int

    @property
    def record_len(self) -> int:
        return RECORD_HEADER_LEN + self.sealed_len


@dataclass(frozen=True)
class PackTrailer:
    pack_id: str
    header_len: int
    records_end: int  # offset where the trailer starts
    trailer_len: int  # body + footer
    chunks: list[TrailerEntry]


def new_pack_id() -> str:
    """A random 128-bit pack id as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def _bytes_view(data: Buffer) -> memoryview:
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


# -- zstd contexts (not thread-safe: one per thread) ----------------------------------------

_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_tls, "cctx", None)
    if cache is None:
        cache = _tls.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        # No zstd checksum: the GCM tag already authenticates the payload.
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=False, write_content_size=True
        )
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


def _compress_if_worth_it(plain: memoryview, level: int) -> bytes | None:
    """zstd-compress ``plain`` if that saves at least 10%; None means "store raw".

    Chunks of 256 KiB or more are first probed: four 16 KiB slices spread over the chunk
    are compressed as one frame (about 5% of the work for a 1 MiB chunk). If the probe
    does not save 10%, the chunk is stored raw without compressing it in full.
    """
    n = plain.nbytes
    if n < _MIN_COMPRESS_LEN:
        return None
    cctx = _compressor(level)
    if n >= _SAMPLE_MIN_CHUNK:
        probe = cctx.compressobj()
        out = 0
        step = (n - _SAMPLE_SLICE_LEN) // (_SAMPLE_SLICES - 1)
        for i in range(_SAMPLE_SLICES):
            start = i * step
            out += len(probe.compress(plain[start : start + _SAMPLE_SLICE_LEN]))
        out += len(probe.flush())
        if not _worth_it(out, _SAMPLE_SLICES * _SAMPLE_SLICE_LEN):
            return None
    compressed = cctx.compress(plain)
    return compressed if _worth_it(len(compressed), n) else None


# -- records -------------------------------------------------------------------------------


def seal_chunk(sealer: Sealer, chunk_id: bytes, plain: Buffer, level: int = 1) -> SealedChunk:
    """Compress (if worth it) and seal one chunk into a record. Pure and thread-safe.

    ``sealer`` must hold the DEK of the pack the record will be appended to.
    """
    if len(chunk_id) != CHUNK_ID_LEN:
        raise ValueError(f"chunk id must be {CHUNK_ID_LEN} bytes, got {len(chunk_id)}")
    view = _bytes_view(plain)
    plain_len = view.nbytes
    if plain_len > MAX_PLAIN_LEN:
        raise ValueError(f"chunk of {plain_len} bytes is too large for a record")
    compressed = _compress_if_worth_it(view, level)
    flags = 0 if compressed is None else FLAG_ZSTD
    payload: Buffer = view if compressed is None else compressed
    cid = bytes(chunk_id)
    header = _RECORD.pack(
        RECORD_MAGIC, FORMAT_VERSION, flags, 0, cid, plain_len, len(payload) + SEAL_OVERHEAD
    )
    return SealedChunk(cid, sealer.seal_framed(header, payload, header), plain_len, flags)


def parse_record_header(data: Buffer) -> RecordHeader:
    """Parse and validate a record's 48-byte header (``data`` may extend past it)."""
    view = _bytes_view(data)
    if view.nbytes < RECORD_HEADER_LEN:
        raise CorruptPackError(f"record truncated: {view.nbytes} bytes, header needs {RECORD_HEADER_LEN}")
    magic, version, flags, reserved, cid, plain_len, sealed_len = _RECORD.unpack_from(view)
    if magic != RECORD_MAGIC:
        raise CorruptPackError(f"bad record magic {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise CorruptPackError(f"unsupported record version {version}")
    if flags & ~KNOWN_FLAGS:
        raise CorruptPackError(f"record has unknown flags 0x{flags:02x}")
    if reserved:
        raise CorruptPackError("record reserved field is not zero")
    if sealed_len < SEAL_OVERHEAD:
        raise CorruptPackError(f"record sealed length {sealed_len} is below the {SEAL_OVERHEAD}-byte minimum")
    if not flags & FLAG_ZSTD and sealed_len != plain_len + SEAL_OVERHEAD:
        raise CorruptPackError(
            f"raw record: sealed length {sealed_len} does not fit plain length {plain_len}"
        )
    return RecordHeader(bytes(cid), flags, plain_len, sealed_len)


def open_record(
    sealer: Sealer, record: Buffer, expected_chunk_id: bytes, out: memoryview | None = None
) -> bytes | memoryview:
    """Verify, decrypt and decompress one record; return the chunk's plaintext.

    Raises :class:`CorruptPackError` for a malformed record or a different chunk id, and
    :class:`~crypto.errors.IntegrityError` if authentication fails. The plaintext is not
    re-hashed: the GCM tag over the AAD-bound chunk id already authenticates it.

    ``out``, a writable buffer of the chunk's size, is where an uncompressed record is
    decrypted to (and returned) instead of a new buffer; other records ignore it.
    """
    view = _bytes_view(record)
    hdr = parse_record_header(view)
    if view.nbytes != hdr.record_len:
        raise CorruptPackError(f"record is {view.nbytes} bytes, its header says {hdr.record_len}")
    if hdr.chunk_id != expected_chunk_id:
        raise CorruptPackError(
            f"record holds chunk {hdr.chunk_id.hex()}, expected {bytes(expected_chunk_id).hex()}"
        )
    body = RECORD_HEADER_LEN + NONCE_LEN
    nonce, sealed, aad = view[RECORD_HEADER_LEN:body], view[body:], view[:RECORD_HEADER_LEN]
    try:  # (parse_record_header checked that an uncompressed record seals plain_len bytes)
        if out is not None and not hdr.flags & FLAG_ZSTD and out.nbytes == hdr.plain_len:
            sealer.open_into(nonce, sealed, aad, out)
            return out
        payload = sealer.open_parts(nonce, sealed, aad)
    except IntegrityError:
        raise IntegrityError(f"chunk {hdr.chunk_id.hex()}: record failed authentication") from None
    if hdr.flags & FLAG_ZSTD:
        try:
            if zstandard.frame_content_size(payload) != hdr.plain_len:
                raise CorruptPackError(f"chunk {hdr.chunk_id.hex()}: zstd frame size does not match")
            plain = _decompressor().decompress(payload, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise CorruptPackError(f"chunk {hdr.chunk_id.hex()}: zstd payload is invalid ({e})") from None
    else:
        plain = payload
    if len(plain) != hdr.plain_len:
        raise CorruptPackError(f"chunk {hdr.chunk_id.hex()}: {len(plain)} bytes, expected {hdr.plain_len}")
    return plain


# -- pack header ---------------------------------------------------------------------------


def _check_pack_id(pack_id: str) -> None:
    if not isinstance(pack_id, str) or not _PACK_ID_RE.fullmatch(pack_id):
        raise ValueError(f"pack id must be 1-{MAX_PACK_ID_LEN} characters of [A-Za-z0-9._-], got {pack_id!r}")


def encode_wrapped_key(wrapped: WrappedKey) -> bytes:
    """``kek_id_len u16 | kek_id | kek_version u32 | blob_len u16 | blob`` (pack headers and
    inline manifests); read back with :func:`read_wrapped_key`."""
    kek_id = wrapped.kek_id.encode("utf-8")
    if not 0 < len(kek_id) <= MAX_KEK_ID_LEN:
        raise ValueError(f"kek id must be 1-{MAX_KEK_ID_LEN} UTF-8 bytes")
    if not 0 <= wrapped.kek_version <= 0xFFFFFFFF:
        raise ValueError(f"kek version {wrapped.kek_version} does not fit in u32")
    if not 0 < len(wrapped.blob) <= MAX_WRAPPED_DEK_LEN:
        raise ValueError(f"wrapped DEK must be 1-{MAX_WRAPPED_DEK_LEN} bytes")
    return b"".join(
        (
            struct.pack("<H", len(kek_id)),
            kek_id,
            struct.pack("<IH", wrapped.kek_version, len(wrapped.blob)),
            bytes(wrapped.blob),
        )
    )


def _encode_header(pack_id: str, wrapped: WrappedKey) -> bytes:
    _check_pack_id(pack_id)
    pid = pack_id.encode("ascii")
    body = struct.pack("<B", len(pid)) + pid + encode_wrapped_key(wrapped)
    header_len = _HEADER_FIXED.size + len(body) + _CHECKSUM.size
    head = _HEADER_FIXED.pack(PACK_MAGIC, FORMAT_VERSION, FORMAT_MINOR, 0, header_len) + body
    return head + _CHECKSUM.pack(xxhash.xxh64_intdigest(head))


class ByteCursor:
    """Bounds-checked sequential reads that raise CorruptPackError instead of struct.error."""

    __slots__ = ("_end", "_pos", "_view", "_what")

    def __init__(self, view: memoryview, start: int, end: int, what: str) -> None:
        self._view, self._pos, self._end, self._what = view, start, end, what

    @property
    def pos(self) -> int:
        return self._pos

    def take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > self._end:
            raise CorruptPackError(f"{self._what} is truncated or has a bad length field")
        out = self._view[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size))


_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def parse_header(data: Buffer) -> PackHeader:
    """Parse a pack header from the first bytes of a pack (fetch ``HEADER_MAX`` or the whole pack)."""
    view = _bytes_view(data)
    if view.nbytes < _HEADER_FIXED.size:
        raise CorruptPackError(f"pack header truncated: {view.nbytes} bytes")
    magic, major, minor, _reserved, header_len = _HEADER_FIXED.unpack_from(view)
    if magic != PACK_MAGIC:
        raise CorruptPackError(f"not a Strata pack (magic {bytes(magic)!r})")
    if major != FORMAT_VERSION:
        raise CorruptPackError(f"unsupported pack format version {major} (this build reads {FORMAT_VERSION})")
    if not _HEADER_MIN <= header_len <= HEADER_MAX:
        raise CorruptPackError(f"pack header length {header_len} is out of range")
    if view.nbytes < header_len:
        raise CorruptPackError(f"pack header truncated: have {view.nbytes} of {header_len} bytes")
    end = header_len - _CHECKSUM.size
    (stored,) = _CHECKSUM.unpack_from(view, end)
    if xxhash.xxh64_intdigest(view[:end]) != stored:
        raise CorruptPackError("pack header checksum mismatch")
    cur = ByteCursor(view, _HEADER_FIXED.size, end, "pack header")
    (pid_len,) = cur.unpack(_U8)
    pack_id = _pack_id_field(cur.take(pid_len), "pack header")
    wrapped = read_wrapped_key(cur, "pack header")
    if minor == 0 and cur.pos != end:  # later minors may append fields before the checksum
        raise CorruptPackError("pack header has unexpected extra bytes")
    return PackHeader(pack_id, wrapped, header_len)


def read_wrapped_key(cur: ByteCursor, what: str) -> WrappedKey:
    """Read what :func:`encode_wrapped_key` wrote; CorruptPackError names ``what``."""
    (kek_len,) = cur.unpack(_U16)
    try:
        kek_id = bytes(cur.take(kek_len)).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptPackError(f"{what}: kek id is not UTF-8") from None
    (kek_version,) = cur.unpack(_U32)
    (blob_len,) = cur.unpack(_U16)
    blob = bytes(cur.take(blob_len))
    if not kek_id or not blob:
        raise CorruptPackError(f"{what} has an empty kek id or wrapped DEK")
    return WrappedKey(kek_id, kek_version, blob)


def _pack_id_field(raw: memoryview, what: str) -> str:
    try:
        pack_id = bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise CorruptPackError(f"{what}: pack id is not ASCII") from None
    if not _PACK_ID_RE.fullmatch(pack_id):
        raise CorruptPackError(f"{what}: invalid pack id {pack_id!r}")
    return pack_id


# -- writer --------------------------------------------------------------------------------


class PackWriter:
    """Lays out one pack. Pure bookkeeping, no I/O: the caller writes ``header()``, then each
    ``sealed.record`` in the order they were ``add()``-ed, then ``trailer()``.

    Every record must have been sealed with the Sealer of this pack's DEK (the one
    ``wrapped_dek`` wraps). Not thread-safe; give it one owner (the pack's group commit).
    """

    def __init__(self, pack_id: str, wrapped_dek: WrappedKey) -> None:
        self._pack_id = pack_id
        self._wrapped_dek = wrapped_dek
        self._header = _encode_header(pack_id, wrapped_dek)
        self._size = len(self._header)
        self._entries: list[TrailerEntry] = []
        self._trailer: bytes | None = None

    @property
    def pack_id(self) -> str:
        return self._pack_id

    @property
    def wrapped_dek(self) -> WrappedKey:
        return self._wrapped_dek

    @property
    def size(self) -> int:
        """Bytes so far: header plus every added record (not the trailer)."""
        return self._size

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def chunks(self) -> list[TrailerEntry]:
        """Every record added so far, with its chunk id, in pack order."""
        return list(self._entries)

    def header(self) -> bytes:
        return self._header

    def add(self, sealed: SealedChunk) -> ChunkLocation:
        """Place ``sealed.record`` at the current end of the pack and return its location."""
        if self._trailer is not None:
            raise RuntimeError(f"pack {self._pack_id} is finished; cannot add records")
        hdr = parse_record_header(sealed.record)
        length = len(sealed.record)
        if (
            hdr.chunk_id != sealed.chunk_id
            or hdr.plain_len != sealed.plain_len
            or hdr.flags != sealed.flags
            or hdr.record_len != length
        ):
            raise ValueError("SealedChunk fields do not match its record header")
        entry = TrailerEntry(self._pack_id, self._size, length, sealed.plain_len, sealed.flags, hdr.chunk_id)
        self._entries.append(entry)
        self._size += length
        return entry.location

    def trailer(self) -> bytes:
        """The trailer (body + footer). Finishes the pack: ``add()`` is refused afterwards."""
        if self._trailer is None:
            self._trailer = _encode_trailer(self._pack_id, len(self._header), self._size, self._entries)
        return self._trailer


# -- trailer -------------------------------------------------------------------------------


def _encode_trailer(pack_id: str, header_len: int, records_end: int, entries: list[TrailerEntry]) -> bytes:
    pid = pack_id.encode("ascii")
    parts = [
        _TRAILER_FIXED.pack(
            TRAILER_MAGIC, FORMAT_VERSION, FORMAT_MINOR, 0, header_len, records_end, len(entries), len(pid)
        ),
        pid,
    ]
    parts += [_ENTRY.pack(e.chunk_id, e.offset, e.length, e.plain_len, e.flags) for e in entries]
    body = b"".join(parts)
    trailer_len = len(body) + FOOTER_LEN
    if trailer_len > 0xFFFFFFFF:
        raise ValueError("trailer too large")
    head = struct.pack("<IB3x", trailer_len, FORMAT_VERSION)
    checksum = xxhash.xxh64_intdigest(body + head)
    return body + _FOOTER.pack(trailer_len, FORMAT_VERSION, checksum, TRAILER_MAGIC)


def parse_footer(tail: Buffer) -> int:
    """Parse the footer at the end of ``tail`` (at least the pack's last ``FOOTER_LEN`` bytes).

    Returns the trailer length (body + footer): fetch that many bytes from the end of the
    pack and pass them to :func:`parse_trailer`.
    """
    view = _bytes_view(tail)
    if view.nbytes < FOOTER_LEN:
        raise CorruptPackError(f"pack footer truncated: {view.nbytes} of {FOOTER_LEN} bytes")
    trailer_len, major, _checksum, magic = _FOOTER.unpack_from(view, view.nbytes - FOOTER_LEN)
    if magic != TRAILER_MAGIC:
        raise CorruptPackError("pack footer magic not found (pack truncated or not finished)")
    if major != FORMAT_VERSION:
        raise CorruptPackError(f"unsupported trailer version {major} (this build reads {FORMAT_VERSION})")
    if trailer_len < _TRAILER_MIN:
        raise CorruptPackError(f"pack trailer length {trailer_len} is too small")
    return trailer_len


def parse_trailer_full(trailer: Buffer) -> PackTrailer:
    """Parse and validate a trailer: the pack's last ``trailer_len`` bytes (or any longer
    suffix, including the whole pack). Checks the checksum and that records tile the pack."""
    view = _bytes_view(trailer)
    trailer_len = parse_footer(view)
    if view.nbytes < trailer_len:
        raise CorruptPackError(f"pack trailer truncated: have {view.nbytes} of {trailer_len} bytes")
    view = view[view.nbytes - trailer_len :]
    body_end = trailer_len - FOOTER_LEN
    (stored,) = _CHECKSUM.unpack_from(view, body_end + 8)
    if xxhash.xxh64_intdigest(view[: body_end + 8]) != stored:
        raise CorruptPackError("pack trailer checksum mismatch")
    cur = ByteCursor(view, 0, body_end, "pack trailer")
    magic, major, minor, _reserved, header_len, records_end, count, pid_len = cur.unpack(_TRAILER_FIXED)
    if magic != TRAILER_MAGIC:
        raise CorruptPackError("pack trailer magic mismatch")
    if major != FORMAT_VERSION:
        raise CorruptPackError(f"unsupported trailer version {major} (this build reads {FORMAT_VERSION})")
    pack_id = _pack_id_field(cur.take(pid_len), "pack trailer")
    if not _HEADER_MIN <= header_len <= HEADER_MAX:
        raise CorruptPackError(f"pack trailer: header length {header_len} is out of range")
    table = cur.take(count * _ENTRY.size)
    if minor == 0 and cur.pos != body_end:
        raise CorruptPackError("pack trailer length does not match its entry count")
    entries: list[TrailerEntry] = []
    expected = header_len
    for cid, offset, length, plain_len, flags in _ENTRY.iter_unpack(table):
        if offset != expected:
            raise CorruptPackError(f"pack trailer: record at offset {offset}, expected {expected}")
        if length < RECORD_OVERHEAD or flags & ~KNOWN_FLAGS:
            raise CorruptPackError(f"pack trailer: bad entry at offset {offset}")
        if not flags & FLAG_ZSTD and length != plain_len + RECORD_OVERHEAD:
            raise CorruptPackError(f"pack trailer: raw record at offset {offset} has inconsistent lengths")
        entries.append(TrailerEntry(pack_id, offset, length, plain_len, flags, cid))
        expected = offset + length
    if expected != records_end:
        raise CorruptPackError(f"pack trailer: records end at {expected}, trailer says {records_end}")
    return PackTrailer(pack_id, header_len, records_end, trailer_len, entries)


def parse_trailer(trailer: Buffer, pack_id: str) -> list[TrailerEntry]:
    """Every chunk of pack ``pack_id``, in record order, from its trailer (see
    :func:`parse_trailer_full`). Each entry is a :class:`ChunkLocation` that also carries
    its ``chunk_id``. Raises :class:`CorruptPackError` if the trailer names another pack."""
    parsed = parse_trailer_full(trailer)
    if parsed.pack_id != pack_id:
        raise CorruptPackError(f"trailer belongs to pack {parsed.pack_id!r}, expected {pack_id!r}")
    return parsed.chunks


# -- recovery ------------------------------------------------------------------------------


def scan_records(pack: Buffer) -> PackTrailer:
    """Rebuild a pack's chunk list by walking its records from the header (no trailer needed).

    For recovery when the trailer is missing or damaged. Stops at the trailer magic or at
    the end of ``pack``; raises :class:`CorruptPackError` at the first record that does
    not parse or runs past the end. Record contents are not authenticated here.
    """
    view = _bytes_view(pack)
    header = parse_header(view)
    pos, end = header.header_len, view.nbytes
    entries: list[TrailerEntry] = []
    while pos < end and view[pos : pos + len(TRAILER_MAGIC)] != TRAILER_MAGIC:
        hdr = parse_record_header(view[pos:])
        if pos + hdr.record_len > end:
            raise CorruptPackError(f"record at offset {pos} runs past the end of the pack")
        entries.append(
            TrailerEntry(header.pack_id, pos, hdr.record_len, hdr.plain_len, hdr.flags, hdr.chunk_id)
        )
        pos += hdr.record_len
    return PackTrailer(header.pack_id, header.header_len, pos, end - pos, entries)
