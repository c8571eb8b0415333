"""rclone from Debian (``apt-get install rclone``, 1.60 on bookworm) in the client matrix.

rclone sends Content-MD5 and ``X-Amz-Meta-Mtime``, uploads in one PUT up to
``--s3-upload-cutoff`` (200 MiB) and stores ``X-Amz-Meta-Md5chksum`` on multipart uploads,
lists with ListObjects **V1**, creates the bucket before uploads, and compares ETags with
MD5s (``check``, ``sync --checksum``). The remote is configured as ``provider = Other`` with
``force_path_style = true``; the process runs without ``AWS_*`` variables (this machine's
``AWS_CA_BUNDLE`` breaks rclone 1.60: the same as ``env -u AWS_CA_BUNDLE rclone``).

Each rclone run uses ``--use-json-log -v``: the file-level messages (``Copied (new)``,
``Copied (server-side copy)``, ``Deleted``) and the final stats object (transfers, checks,
deletes, errors) are parsed from it rather than from human-readable text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
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

REMOTE = "strata"


@dataclass
class Result:
    """One rclone run: exit code, JSON log entries, and the final stats object."""

    returncode: int
    log: list[dict[str, Any]]
    other: list[str]  # stderr lines that are not JSON (rclone prints a few fatal ones plainly)
    stdout: str

    @property
    def stats(self) -> dict[str, Any]:
        found = [e["stats"] for e in self.log if "stats" in e]
        assert found, f"no stats in rclone's log: {self.log}"
        return found[-1]

    def objects(self, msg: str) -> list[str]:
        """The objects of every log entry whose message is ``msg`` (sorted)."""
        return sorted(e.get("object", "") for e in self.log if e.get("msg") == msg)

    def messages(self) -> list[str]:
        return [str(e.get("msg", "")) for e in self.log]


@dataclass
class Rclone:
    binary: str
    config: Path
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True) -> Result:
        cmd = [self.binary, "--config", str(self.config), "--use-json-log", "-v", "--retries", "1", *args]
        proc = run(cmd, env=self.env, check=check)
        log: list[dict[str, Any]] = []
        other: list[str] = []
        for line in proc.stderr.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if line.strip():
                    other.append(line)
                continue
            log.append(entry)
        return Result(proc.returncode, log, other, proc.stdout)


@pytest.fixture
def rclone(strata: StrataServer, tmp_path: Path) -> Rclone:
    binary = require_binary("rclone", "apt-get install -y --no-install-recommends rclone")
    config = tmp_path / "rclone.conf"
    config.write_text(
        f"[{REMOTE}]\n"
        "type = s3\n"
        "provider = Other\n"
        "env_auth = false\n"
        f"access_key_id = {strata.access_key}\n"
        f"secret_access_key = {strata.secret_key}\n"
        f"endpoint = {strata.endpoint}\n"
        f"region = {strata.region}\n"
        "force_path_style = true\n"
    )
    env = clean_env(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    assert "AWS_CA_BUNDLE" not in env
    return Rclone(binary, config, env)


def remote(bucket: str, path: str = "") -> str:
    return f"{REMOTE}:{bucket}/{path}" if path else f"{REMOTE}:{bucket}"


def test_version(rclone: Rclone) -> None:
    out = run([rclone.binary, "version"], env=rclone.env).stdout
    assert out.startswith("rclone v1."), out


def test_copy_list_check_download(rclone: Rclone, s3: Any, bucket: str, tree: Tree, tmp_path: Path) -> None:
    res = rclone("copy", str(tree.root), remote(bucket, "tree"))
    assert res.objects("Copied (new)") == sorted(tree.files)
    assert res.stats["transfers"] == len(tree.files) and res.stats["errors"] == 0
    assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after copy")
    for rel in tree.files:  # one PutObject each (below the 200 MiB cutoff): ETag == MD5
        head = s3.head_object(Bucket=bucket, Key=f"tree/{rel}")
        assert head["ETag"] == f'"{md5_hex((tree.root / rel).read_bytes())}"', rel
        mtime = (tree.root / rel).stat().st_mtime
        assert abs(float(head["Metadata"]["mtime"]) - mtime) < 1e-3, (rel, head["Metadata"])

    lsf = rclone("lsf", "-R", "--files-only", remote(bucket, "tree")).stdout.splitlines()
    assert sorted(lsf) == sorted(tree.files)
    dirs = rclone("lsf", "--dirs-only", remote(bucket, "tree")).stdout.splitlines()
    assert sorted(dirs) == ["big/", "data/", "with space/", "ünïcødé/"]
    ls = rclone("ls", remote(bucket, "tree")).stdout.splitlines()
    sizes = {line.strip().split(" ", 1)[1]: int(line.split()[0]) for line in ls}
    assert sizes == {rel: (tree.root / rel).stat().st_size for rel in tree.files}
    listed = json.loads(rclone("lsjson", "-R", "--files-only", "--hash", remote(bucket, "tree")).stdout)
    assert {e["Path"]: e["Hashes"]["md5"] for e in listed} == {
        rel: md5_hex((tree.root / rel).read_bytes()) for rel in tree.files
    }

    res = rclone("check", str(tree.root), remote(bucket, "tree"))  # sizes and MD5 (ETag) per file
    assert f"{len(tree.files)} matching files" in res.messages(), res.log
    assert "0 differences found" in res.messages(), res.log
    assert "Using md5 for hash comparisons" in res.messages(), res.log
    assert not [m for m in res.messages() if "could not be checked" in m], res.log  # every MD5 compared

    # check must see a same-size change: the MD5 (ETag) comparison is real
    changed = tree.root / "hello.txt"
    data = bytearray(changed.read_bytes())
    data[10] ^= 0xFF
    changed.write_bytes(bytes(data))
    res = rclone("check", str(tree.root), remote(bucket, "tree"), check=False)
    assert res.returncode != 0
    assert "1 differences found" in res.messages(), res.log

    down = tmp_path / "down"
    res = rclone("copy", remote(bucket, "tree"), str(down))
    assert res.stats["transfers"] == len(tree.files) and res.stats["errors"] == 0
    assert_same(snapshot(down), tree.files, "download")  # the bucket still has the original hello.txt
    for rel in tree.files:  # modification times come back from X-Amz-Meta-Mtime
        if rel != "hello.txt":
            assert abs((down / rel).stat().st_mtime - (tree.root / rel).stat().st_mtime) < 1e-3, rel


def test_sync_twice_then_changes(rclone: Rclone, s3: Any, bucket: str, tree: Tree) -> None:
    dest = remote(bucket, "sync")
    res = rclone("sync", str(tree.root), dest)
    assert res.objects("Copied (new)") == sorted(tree.files)
    before = remote_objects(s3, bucket, "sync/")

    for extra in ([], ["--checksum"]):  # size + mtime, then size + MD5 vs ETag
        res = rclone("sync", *extra, str(tree.root), dest)
        stats = res.stats
        assert (stats["transfers"], stats["deletes"], stats["errors"]) == (0, 0, 0), (extra, stats, res.log)
        assert stats["checks"] == len(tree.files), (extra, stats)
        assert "There was nothing to transfer" in res.messages(), res.log
        assert remote_objects(s3, bucket, "sync/") == before, f"sync {extra} changed the bucket"

    m = mutate_tree(tree.root)
    res = rclone("sync", str(tree.root), dest)
    assert (res.stats["transfers"], res.stats["deletes"]) == (2, 1), res.stats
    assert res.objects("Copied (new)") == [m.added]
    assert res.objects("Copied (replaced existing)") == [m.changed]
    assert res.objects("Deleted") == [m.deleted]
    assert_same(remote_snapshot(s3, bucket, "sync/"), snapshot(tree.root), "bucket after sync")
    after = remote_objects(s3, bucket, "sync/")
    untouched = set(tree.files) - {m.changed, m.deleted}
    assert {r: after[f"sync/{r}"] for r in untouched} == {r: before[f"sync/{r}"] for r in untouched}


def test_multipart_upload_and_server_side_copyto(rclone: Rclone, s3: Any, bucket: str, tree: Tree) -> None:
    part = 5 * MiB
    res = rclone(
        "copyto",
        "--s3-upload-cutoff",
        "5M",
        "--s3-chunk-size",
        "5M",
        str(tree.big_path),
        remote(bucket, "mp/big.bin"),
    )
    assert res.objects("Copied (new) to: big.bin") == ["multi part.bin"], res.log
    head = s3.head_object(Bucket=bucket, Key="mp/big.bin")
    assert head["ETag"] == multipart_etag_of_file(tree.big_path, part)
    md5 = hashlib.md5(tree.big_path.read_bytes())
    assert head["Metadata"]["md5chksum"] == base64.b64encode(md5.digest()).decode()

    small = "ünïcødé/日本語 ✓.txt"
    upload_tree(s3, bucket, "src/", tree)
    res = rclone("copyto", remote(bucket, f"src/{small}"), remote(bucket, "copy/small ✓.txt"))
    assert res.objects("Copied (server-side copy) to: small ✓.txt") == ["日本語 ✓.txt"], res.log
    res = rclone("copyto", remote(bucket, "mp/big.bin"), remote(bucket, "copy/big.bin"))
    assert res.objects("Copied (server-side copy)") == ["big.bin"], res.log
    assert_same(
        remote_snapshot(s3, bucket, "copy/"),
        {"small ✓.txt": tree.files[small], "big.bin": tree.files[BIG_REL]},
        "server-side copies",
    )
    # the MD5 rclone sees for each copy (ETag, or the multipart source's X-Amz-Meta-Md5chksum)
    sums = rclone("md5sum", remote(bucket, "copy")).stdout.splitlines()
    assert sorted(sums) == sorted(
        [
            f"{md5.hexdigest()}  big.bin",
            f"{md5_hex((tree.root / small).read_bytes())}  small ✓.txt",
        ]
    )


def test_delete_and_purge(rclone: Rclone, s3: Any, bucket: str, small_tree: Tree) -> None:
    upload_tree(s3, bucket, "a/", small_tree)
    upload_tree(s3, bucket, "b/", small_tree)
    txt = sorted(rel for rel in small_tree.files if rel.endswith(".txt"))

    res = rclone("delete", "--include", "*.txt", remote(bucket, "a"))
    assert res.objects("Deleted") == txt
    assert remote_keys(s3, bucket, "a/") == sorted(f"a/{rel}" for rel in small_tree.files if rel not in txt)

    res = rclone("purge", remote(bucket, "a"))
    assert remote_keys(s3, bucket, "a/") == []
    assert remote_keys(s3, bucket) == sorted(f"b/{rel}" for rel in small_tree.files)

    res = rclone("purge", remote(bucket))  # every object, then the bucket itself
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=bucket)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
