"""Block dedup: chunk ids, sealed chunk records and the pack format.

* :mod:`dedup.chunkid` -- keyed BLAKE3 chunk ids and per-tenant dedup keys;
* :mod:`dedup.pack` -- sealing chunks into records, pack writer and parsers;
* :mod:`dedup.errors` -- exceptions.

Pure and synchronous: no I/O, no HTTP. Depends on :mod:`chunker` and :mod:`crypto` only.
"""

from dedup.chunkid import CHUNK_ID_LEN, DEDUP_KEY_LEN, chunk_id, new_dedup_key
from dedup.errors import CorruptPackError, DedupError
from dedup.pack import (
    FLAG_ZSTD,
    FOOTER_LEN,
    FORMAT_VERSION,
    HEADER_MAX,
    PACK_MAGIC,
    PACK_TARGET_SIZE,
    RECORD_HEADER_LEN,
    RECORD_MAGIC,
    RECORD_OVERHEAD,
    TRAILER_MAGIC,
    ChunkLocation,
    PackHeader,
    PackTrailer,
    PackWriter,
    RecordHeader,
    SealedChunk,
    TrailerEntry,
    new_pack_id,
    open_record,
    parse_footer,
    parse_header,
    parse_record_header,
    parse_trailer,
    parse_trailer_full,
    scan_records,
    seal_chunk,
)

__all__ = [
    "CHUNK_ID_LEN",
    "DEDUP_KEY_LEN",
    "FLAG_ZSTD",
    "FOOTER_LEN",
    "FORMAT_VERSION",
    "HEADER_MAX",
    "PACK_MAGIC",
    "PACK_TARGET_SIZE",
    "RECORD_HEADER_LEN",
    "RECORD_MAGIC",
    "RECORD_OVERHEAD",
    "TRAILER_MAGIC",
    "ChunkLocation",
    "CorruptPackError",
    "DedupError",
    "PackHeader",
    "PackTrailer",
    "PackWriter",
    "RecordHeader",
    "SealedChunk",
    "TrailerEntry",
    "chunk_id",
    "new_dedup_key",
    "new_pack_id",
    "open_record",
    "parse_footer",
    "parse_header",
    "parse_record_header",
    "parse_trailer",
    "parse_trailer_full",
    "scan_records",
    "seal_chunk",
]
