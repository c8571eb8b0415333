"""GETs whose data turns out to be unreadable. Before the status line goes out the client
gets a proper error (500 InternalError); after it (the damage is further into the object)
the server cuts the connection at once, so the client sees a short body instead of waiting
for bytes that will never come. A small body (under 512 KiB) is read whole before anything
is sent, so damage anywhere in it is a proper error."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from support.s3 import make_client
from support.server import StrataServer

from chunker.fastcdc import chunk_buffer

MiB = 1024 * 1024


def _packs(server: StrataServer) -> set[Path]:
    return set((server.blobs_dir / "packs").rglob("*.pack"))


def _flip_byte(pack: Path, offset: int) -> None:
    with pack.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("damage", ["lost pack", "flipped bit"])
def test_damage_after_the_headers_cuts_the_connection(
    strata_factory: Callable[..., StrataServer], damage: str
) -> None:
    """A lost pack fails when its run is read; a flipped bit when its run is opened, which
    for a GET's later runs happens in the send thread (deferred runs, gateway/readpath.py)."""
    # small runs and one run of read-ahead: the first piece comes from the first pack only
    server = strata_factory(extra_env={"STRATA_STORAGE_READ_RUN": "262144", "STRATA_STORAGE_READ_AHEAD": "1"})
    s3: Any = make_client(server)
    s3.create_bucket(Bucket="damaged")
    shared = os.urandom(12 * MiB)
    s3.put_object(Bucket="damaged", Key="a", Body=shared)
    before = _packs(server)
    s3.put_object(Bucket="damaged", Key="b", Body=shared + os.urandom(4 * MiB))
    added = _packs(server) - before
    assert added  # b's own tail went into a pack of its own; its head dedups against a
    for pack in added:
        if damage == "lost pack":
            pack.unlink()
        else:  # the middle of b's tail: in a run after the first
            _flip_byte(pack, pack.stat().st_size // 2)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "damaged", "Key": "b"})
    started = time.monotonic()
    received = 0
    with pytest.raises(requests.RequestException), requests.get(url, stream=True, timeout=60) as resp:
        assert resp.status_code == 200
        for piece in resp.iter_content(1 << 16):
            received += len(piece)
    assert 0 < received < 16 * MiB
    assert time.monotonic() - started < 20  # cut promptly, not at the client's read timeout
    assert server.is_running()
    assert s3.get_object(Bucket="damaged", Key="a")["Body"].read() == shared  # a is intact


@pytest.mark.parametrize("damage", ["lost pack", "flipped bit"])
def test_damage_at_the_start_is_a_proper_error(
    strata_factory: Callable[..., StrataServer], damage: str
) -> None:
    """The first run is read and opened before the status line (never deferred), so damage
    in it is a 500, not a cut connection. A chunk is at least 256 KiB, so 64 KiB into the
    one pack of a 6 MiB object is in its first record."""
    server = strata_factory()
    s3: Any = make_client(server)
    s3.create_bucket(Bucket="lost")
    s3.put_object(Bucket="lost", Key="big", Body=os.urandom(6 * MiB))
    packs = _packs(server)
    assert len(packs) == 1
    for pack in packs:
        if damage == "lost pack":
            pack.unlink()
        else:
            _flip_byte(pack, 64 * 1024)
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="lost", Key="big")
    assert err.value.response["Error"]["Code"] == "InternalError"
    s3.put_object(Bucket="lost", Key="small", Body=b"fine")  # the server keeps serving
    assert s3.get_object(Bucket="lost", Key="small")["Body"].read() == b"fine"


def test_damage_anywhere_in_a_small_body_is_a_proper_error(
    strata_factory: Callable[..., StrataServer],
) -> None:
    """A 200 KiB range across two packs, the second one lost: the range is read whole
    before its status line (gateway/s3/handlers/objects.py), so the client gets a 500, not a
    206 and a cut connection."""
    server = strata_factory()
    s3: Any = make_client(server)
    s3.create_bucket(Bucket="small")
    shared = random.Random(5).randbytes(12 * MiB)
    s3.put_object(Bucket="small", Key="a", Body=shared)
    before = _packs(server)
    s3.put_object(Bucket="small", Key="b", Body=shared + os.urandom(4 * MiB))
    # b's chunks up to a's last cut but one are a's (same bytes, same cuts): in a's pack
    common = len(shared) - len(chunk_buffer(shared)[-1])
    assert 0 < common < 12 * MiB
    for pack in _packs(server) - before:
        pack.unlink()
    head = s3.get_object(Bucket="small", Key="b", Range=f"bytes=0-{common - 1}")
    assert head["Body"].read() == shared[:common]  # all in a's pack
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="small", Key="b", Range=f"bytes={common - 100_000}-{common + 99_999}")
    assert err.value.response["Error"]["Code"] == "InternalError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
