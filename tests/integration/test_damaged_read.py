"""A GET whose data turns out to be unreadable after the 200 headers went out: the server
must cut the connection at once (the client sees a short body), never leave the client
waiting for bytes that will not come."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from support.s3 import make_client
from support.server import StrataServer


def test_lost_pack_mid_response_cuts_the_connection(strata_factory: Callable[..., StrataServer]) -> None:
    server = strata_factory()
    s3: Any = make_client(server)
    s3.create_bucket(Bucket="damaged")
    s3.put_object(Bucket="damaged", Key="big", Body=os.urandom(6 * 1024 * 1024))
    packs = list((server.blobs_dir / "packs").rglob("*.pack"))
    assert packs
    for pack in packs:
        pack.unlink()
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "damaged", "Key": "big"})
    started = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException):
        with requests.get(url, stream=True, timeout=60) as resp:
            assert resp.status_code == 200  # the headers were already out
            for _ in resp.iter_content(1 << 16):
                pass
    assert time.monotonic() - started < 20  # cut promptly, not at the client's read timeout
    assert server.is_running()
    # the server keeps serving other requests
    s3.put_object(Bucket="damaged", Key="small", Body=b"fine")
    assert s3.get_object(Bucket="damaged", Key="small")["Body"].read() == b"fine"
