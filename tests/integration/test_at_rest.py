"""What lands on disk: encrypted, deduplicated, compressed.

Each test uses a fresh server (its own data dir) so that backend growth is attributable.
"Backend bytes" is the total size of the files under ``<data_dir>/blobs``.

* plaintext of an uploaded object appears nowhere in the data dir (packs, SQLite, WAL);
* the keyring file is private (0600);
* the same 64 MiB uploaded again (other key, other bucket) costs < 2 %;
* 64 MiB of source text costs < half its size (zstd);
* a copy with 10 bytes inserted at the front costs <= 5 % (content-defined chunking).
"""

from __future__ import annotations

import hashlib
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.s3 import MiB, find_in_tree, make_client, sha256_file, unique_bucket, write_text_corpus
from support.server import StrataServer

SIZE = 64 * MiB


def _fresh(strata_factory: Callable[..., StrataServer]) -> tuple[StrataServer, Any, str]:
    server = strata_factory()
    s3 = make_client(server, read_timeout=300)
    bucket = unique_bucket("rest")
    s3.create_bucket(Bucket=bucket)
    return server, s3, bucket


def _get_sha256(s3: Any, bucket: str, key: str) -> str:
    h = hashlib.sha256()
    for block in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
        h.update(block)
    return h.hexdigest()


def _needles(data: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` 32-byte substrings of ``data`` that are not just whitespace or repeats."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < count:
        pos = rng.randrange(0, len(data) - 32)
        needle = data[pos : pos + 32]
        if len(set(needle)) >= 12 and needle not in out:
            out.append(needle)
    return out


def test_no_plaintext_at_rest(strata_factory: Callable[..., StrataServer], tmp_path: Path) -> None:
    server, s3, bucket = _fresh(strata_factory)
    corpus = tmp_path / "corpus.txt"
    write_text_corpus(corpus, 8 * MiB)
    data = corpus.read_bytes()
    s3.put_object(Bucket=bucket, Key="stdlib.txt", Body=data)
    small = b"A tiny confidential note: the launch code is 0000-1111-2222-3333, tell no one.\n"
    s3.put_object(Bucket=bucket, Key="tiny.txt", Body=small)
    assert _get_sha256(s3, bucket, "stdlib.txt") == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket=bucket, Key="tiny.txt")["Body"].read() == small

    needles = [*_needles(data, 12, seed=1), small[2:34], small[40:72]]
    hits = find_in_tree(server.data_dir, needles)
    assert not hits, "plaintext found at rest:\n" + "\n".join(
        f"{p.relative_to(server.data_dir)}: {n!r}" for p, n in hits[:20]
    )


def test_data_dir_layout_and_keyring_mode(strata_factory: Callable[..., StrataServer]) -> None:
    server, s3, bucket = _fresh(strata_factory)
    s3.put_object(Bucket=bucket, Key="k", Body=random.Random(3).randbytes(2 * MiB))
    assert (server.data_dir / "meta.sqlite").is_file()
    keyring = server.data_dir / "keyring.json"
    assert keyring.is_file()
    mode = stat.S_IMODE(keyring.stat().st_mode)
    assert mode == 0o600, f"keyring.json mode is {oct(mode)}"
    assert server.blobs_dir.is_dir()
    assert server.backend_bytes() >= 2 * MiB * 0.9, "object bytes did not land under blobs/"


def test_identical_upload_dedups(strata_factory: Callable[..., StrataServer]) -> None:
    server, s3, bucket = _fresh(strata_factory)
    data = random.Random(64).randbytes(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    b0 = server.backend_bytes()
    s3.put_object(Bucket=bucket, Key="one", Body=data)
    b1 = server.backend_bytes()
    assert b1 - b0 >= 0.95 * SIZE, f"first copy grew the backend by only {b1 - b0} bytes"
    s3.put_object(Bucket=bucket, Key="two", Body=data)
    b2 = server.backend_bytes()
    assert b2 - b1 < 0.02 * SIZE, f"second identical copy cost {(b2 - b1) / SIZE:.1%} of its size"
    other = unique_bucket("rest2")
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="three", Body=data)
    b3 = server.backend_bytes()
    assert b3 - b2 < 0.02 * SIZE, f"copy in another bucket cost {(b3 - b2) / SIZE:.1%} of its size"
    # shared chunks survive deleting one of the objects
    s3.delete_object(Bucket=bucket, Key="one")
    assert _get_sha256(s3, bucket, "two") == digest
    assert _get_sha256(s3, other, "three") == digest


def test_text_compresses(strata_factory: Callable[..., StrataServer], tmp_path: Path) -> None:
    server, s3, bucket = _fresh(strata_factory)
    corpus = tmp_path / "text64.txt"
    write_text_corpus(corpus, SIZE)
    b0 = server.backend_bytes()
    with open(corpus, "rb") as f:
        s3.put_object(Bucket=bucket, Key="text", Body=f)
    grew = server.backend_bytes() - b0
    assert grew < SIZE / 2, f"64 MiB of text took {grew / MiB:.1f} MiB in the backend ({grew / SIZE:.1%})"
    assert grew > 0
    assert _get_sha256(s3, bucket, "text") == sha256_file(corpus)


def test_shifted_copy_dedups(strata_factory: Callable[..., StrataServer]) -> None:
    server, s3, bucket = _fresh(strata_factory)
    data = random.Random(4242).randbytes(SIZE)
    shifted = b"0123456789" + data
    s3.put_object(Bucket=bucket, Key="orig", Body=data)
    b1 = server.backend_bytes()
    s3.put_object(Bucket=bucket, Key="shifted", Body=shifted)
    grew = server.backend_bytes() - b1
    assert grew <= 0.05 * len(shifted), (
        f"copy with 10 bytes inserted cost {grew / MiB:.2f} MiB ({grew / len(shifted):.1%}); "
        "CDC should realign"
    )
    assert _get_sha256(s3, bucket, "shifted") == hashlib.sha256(shifted).hexdigest()
    assert _get_sha256(s3, bucket, "orig") == hashlib.sha256(data).hexdigest()


def test_insert_mid_object_dedups(strata_factory: Callable[..., StrataServer]) -> None:
    """An edit in the middle only costs the chunks around it (at most two 4 MiB max chunks)."""
    server, s3, bucket = _fresh(strata_factory)
    data = random.Random(77).randbytes(32 * MiB)
    mid = 16 * MiB + 4103
    edited = data[:mid] + b"EDIT" + data[mid:]
    s3.put_object(Bucket=bucket, Key="a", Body=data)
    b1 = server.backend_bytes()
    s3.put_object(Bucket=bucket, Key="b", Body=edited)
    grew = server.backend_bytes() - b1
    assert grew <= 0.25 * 32 * MiB, f"a 4-byte insert cost {grew / MiB:.2f} MiB"
    assert _get_sha256(s3, bucket, "b") == hashlib.sha256(edited).hexdigest()
