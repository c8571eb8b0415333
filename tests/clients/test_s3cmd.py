"""s3cmd from Debian (``apt-get install s3cmd``, 2.3 on bookworm) in the client matrix.

s3cmd signs every payload (SigV4, ``x-amz-content-sha256`` of the body, no checksum
headers), lists with ListObjects **V1** (``GET /bucket/?delimiter=%2F``), keeps the MD5
and file attributes in ``x-amz-meta-s3cmd-attrs`` (which ``sync`` uses for multipart
objects, whose ETag is not an MD5), and deletes recursively with DeleteObjects
(Content-MD5). The ``.s3cfg`` points ``host_base`` and ``host_bucket`` at the server (path
style), with ``use_https = False``, ``signature_v2 = False`` and 5 MiB multipart chunks so
that the tree's 9 MiB file is a 2-part upload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.clients import clean_env, require_binary, run
from support.s3 import MiB, multipart_etag_of_file
from support.server import StrataServer
from support.trees import (
    BIG_REL,
    Tree,
    assert_same,
    md5_hex,
    mutate_tree,
    remote_keys,
    remote_objects,
    remote_snapshot,
    snapshot,
    upload_tree,
)

PART = 5 * MiB


@dataclass
class S3cmd:
    binary: str
    config: Path
    env: dict[str, str]

    def __call__(self, *args: str) -> str:
        """Run ``s3cmd -c CFG <args>``; return stdout (raise CommandFailed on error)."""
        return run([self.binary, "-c", str(self.config), "--no-progress", *args], env=self.env).stdout


@pytest.fixture
def s3cmd(strata: StrataServer, tmp_path: Path) -> S3cmd:
    binary = require_binary("s3cmd", "apt-get install -y --no-install-recommends s3cmd")
    host = f"{strata.host}:{strata.port}"
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {strata.access_key}\n"
        f"secret_key = {strata.secret_key}\n"
        f"host_base = {host}\n"
        f"host_bucket = {host}\n"
        f"bucket_location = {strata.region}\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        f"multipart_chunk_size_mb = {PART // MiB}\n"
    )
    return S3cmd(binary, config, clean_env(HOME=str(tmp_path)))


@dataclass
class Listing:
    """``s3cmd ls`` output: ``DIR`` lines and object lines (URL -> size)."""

    dirs: set[str] = field(default_factory=set)
    objects: dict[str, int] = field(default_factory=dict)


_LS_OBJECT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d +(\d+) +(s3://.+)$")
_LS_DIR = re.compile(r"^ +DIR +(s3://.+)$")


def parse_ls(out: str) -> Listing:
    listing = Listing()
    for line in out.splitlines():
        if m := _LS_DIR.match(line):
            listing.dirs.add(m.group(1))
        elif m := _LS_OBJECT.match(line):
            listing.objects[m.group(2)] = int(m.group(1))
        elif line.strip():
            raise AssertionError(f"unexpected `s3cmd ls` line: {line!r}")
    return listing


def lines(out: str, verb: str) -> list[str]:
    """The S3 URLs or local paths of ``upload:``/``download:``/``delete:``/``remote copy:`` lines."""
    found = []
    for line in out.splitlines():
        if m := re.match(rf"^{verb}: '(.*?)'(?: -> '(.*?)')?", line):
            found.append(m.group(2) or m.group(1))
    return sorted(found)


def test_version(s3cmd: S3cmd) -> None:
    assert s3cmd("--version").startswith("s3cmd version 2."), s3cmd("--version")


def test_put_ls_get(s3cmd: S3cmd, s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    base = f"s3://{bucket}/"
    out = s3cmd("put", str(tree.root / "hello.txt"), f"{base}single/hello ✓.txt")
    assert lines(out, "upload") == [f"{base}single/hello ✓.txt"]
    out = s3cmd("put", "--recursive", f"{tree.root}/", f"{base}tree/")
    assert lines(out, "upload") == sorted(f"{base}tree/{rel}" for rel in tree.files)
    assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after put --recursive")
    objects = remote_objects(s3, bucket, "tree/")
    for rel in tree.files:
        etag = objects[f"tree/{rel}"]["ETag"]
        if rel == BIG_REL:
            assert etag == multipart_etag_of_file(tree.big_path, PART), "multipart ETag"
        else:
            assert etag == f'"{md5_hex((tree.root / rel).read_bytes())}"', rel

    top = parse_ls(s3cmd("ls", f"{base}tree/"))
    assert top.dirs == {f"{base}tree/{d}/" for d in ("big", "data", "with space", "ünïcødé")}
    assert top.objects == {f"{base}tree/hello.txt": 700, f"{base}tree/empty": 0}
    everything = parse_ls(s3cmd("ls", "--recursive", base))
    assert everything.dirs == set()
    expected = {f"{base}tree/{rel}": (tree.root / rel).stat().st_size for rel in tree.files}
    assert everything.objects == {**expected, f"{base}single/hello ✓.txt": 700}
    assert f"s3://{bucket}" in s3cmd("ls").split()

    info = s3cmd("info", f"{base}tree/{BIG_REL}")  # the MD5 from x-amz-meta-s3cmd-attrs
    assert re.search(rf"MD5 sum: +{md5_hex(tree.big_path.read_bytes())}$", info, re.M), info

    one = tmp_path / "one.txt"
    s3cmd("get", f"{base}single/hello ✓.txt", str(one))
    assert one.read_bytes() == (tree.root / "hello.txt").read_bytes()
    down = tmp_path / "down"
    down.mkdir()
    out = s3cmd("get", "--recursive", f"{base}tree/", f"{down}/")
    assert len(lines(out, "download")) == len(tree.files)
    assert_same(snapshot(down), tree.files, "downloaded tree")


def test_cp_and_del(s3cmd: S3cmd, s3: Any, bucket: str, tree: Tree) -> None:
    base = f"s3://{bucket}/"
    seeded = upload_tree(s3, bucket, "src/", tree, include_big=True)
    small = "with space/file name with spaces.txt"

    out = s3cmd("cp", f"{base}src/{small}", f"{base}copy/small ✓.txt")  # CopyObject
    assert lines(out, "remote copy") == [f"{base}copy/small ✓.txt"]
    out = s3cmd("cp", f"{base}src/{BIG_REL}", f"{base}copy/big.bin")
    assert_same(
        remote_snapshot(s3, bucket, "copy/"),
        {"small ✓.txt": tree.files[small], "big.bin": tree.files[BIG_REL]},
        "copies",
    )
    out = s3cmd("cp", "--recursive", f"{base}src/", f"{base}all/")
    assert len(lines(out, "remote copy")) == len(seeded)
    assert_same(remote_snapshot(s3, bucket, "all/"), seeded, "recursive copy")

    out = s3cmd("del", f"{base}copy/small ✓.txt")
    assert lines(out, "delete") == [f"{base}copy/small ✓.txt"]
    assert remote_keys(s3, bucket, "copy/") == ["copy/big.bin"]
    out = s3cmd("del", "--recursive", f"{base}all/")  # DeleteObjects with Content-MD5
    assert lines(out, "delete") == sorted(f"{base}all/{rel}" for rel in seeded)
    assert remote_keys(s3, bucket, "all/") == []
    assert_same(remote_snapshot(s3, bucket, "src/"), seeded, "copy sources afterwards")


def test_sync_twice_then_changes(s3cmd: S3cmd, s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    dest = f"s3://{bucket}/sync/"
    out = s3cmd("sync", f"{tree.root}/", dest)
    assert lines(out, "upload") == sorted(dest + rel for rel in tree.files)
    before = remote_objects(s3, bucket, "sync/")

    out = s3cmd("sync", "--stats", f"{tree.root}/", dest)  # sizes and MD5s (s3cmd-attrs for multipart)
    assert lines(out, "upload") == [], f"second sync uploaded again:\n{out}"
    assert "Number of files transferred" not in out, out
    assert remote_objects(s3, bucket, "sync/") == before, "second sync changed the bucket"

    m = mutate_tree(tree.root)
    out = s3cmd("sync", "--delete-removed", f"{tree.root}/", dest)
    assert lines(out, "upload") == sorted([dest + m.changed, dest + m.added])
    assert lines(out, "delete") == [dest + m.deleted]
    assert_same(remote_snapshot(s3, bucket, "sync/"), snapshot(tree.root), "bucket after sync")
    after = remote_objects(s3, bucket, "sync/")
    untouched = set(tree.files) - {m.changed, m.deleted}
    assert {r: after[f"sync/{r}"] for r in untouched} == {r: before[f"sync/{r}"] for r in untouched}

    down = tmp_path / "down"
    (down / "stale dir").mkdir(parents=True)
    (down / "stale dir" / "stale.txt").write_bytes(b"only local")
    s3cmd("sync", "--delete-removed", dest, f"{down}/")
    assert_same(snapshot(down), snapshot(tree.root), "local tree after sync from S3")
    out = s3cmd("sync", dest, f"{down}/")
    assert lines(out, "download") == [], f"second sync from S3 downloaded again:\n{out}"
