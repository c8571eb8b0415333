"""Content-defined chunking: a stream of bytes in, chunk boundaries (zero-copy views) out.

The package knows nothing about hashing, storage or HTTP; see :mod:`chunker.fastcdc`.
"""

from chunker.fastcdc import DEFAULT_PARAMS, ChunkerParams, StreamChunker, chunk_buffer

__all__ = ["DEFAULT_PARAMS", "ChunkerParams", "StreamChunker", "chunk_buffer"]
