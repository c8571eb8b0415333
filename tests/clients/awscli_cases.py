"""The aws-cli matrix, shared by aws-cli 1 (PyPI, in the venv) and aws-cli 2 (Debian).

:class:`AwsCliCases` holds the tests; ``test_awscli_matrix.py`` and ``test_awscli2.py``
subclass it and provide the ``cli`` fixture (an :class:`AwsCli`). Each test drives the CLI
for the operation under test only: seeding and checking go through boto3 and the local
file system (``support.trees``), so every byte, listing, copy and delete is checked
independently of the client that did it.

Both CLIs split at 8 MiB (``multipart_threshold`` and ``multipart_chunksize``), so the
9 MiB file of the test tree is a 2-part upload, and an S3-to-S3 copy of it is a multipart
copy (UploadPartCopy of 8 MiB ranges) instead of a CopyObject.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.clients import run
from support.s3 import MiB, multipart_etag_of_file
from support.trees import (
    BIG_REL,
    Tree,
    assert_same,
    md5_hex,
    mutate_tree,
    remote_keys,
    remote_objects,
    remote_snapshot,
    sha256,
    snapshot,
    upload_tree,
)

CHUNK = 8 * MiB  # aws-cli's default multipart_threshold and multipart_chunksize
_TRANSFER_COMMANDS = {"cp", "mv", "sync"}


@dataclass
class AwsCli:
    """One aws-cli binary pointed at a Strata endpoint with a clean environment."""

    binary: str
    endpoint: str
    env: dict[str, str]

    def __call__(self, *args: str) -> str:
        """Run ``aws --endpoint-url E <args>``; return stdout (raise CommandFailed on error)."""
        return run([self.binary, "--endpoint-url", self.endpoint, *args], env=self.env).stdout

    def s3(self, command: str, *args: str) -> str:
        """``aws s3 <command>``, without progress lines for transfer commands."""
        extra = ["--no-progress"] if command in _TRANSFER_COMMANDS else []
        return self("s3", command, *extra, *args)

    def version(self) -> str:
        return run([self.binary, "--version"], env=self.env).stdout.strip()


@dataclass
class Listing:
    """``aws s3 ls`` output: ``PRE`` lines and object lines (name -> size)."""

    prefixes: set[str] = field(default_factory=set)
    objects: dict[str, int] = field(default_factory=dict)


_LS_OBJECT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +(\d+) (.+)$")
_LS_PREFIX = re.compile(r"^ +PRE (.+)$")


def parse_ls(out: str) -> Listing:
    listing = Listing()
    for line in out.splitlines():
        if not line.strip():
            continue
        if m := _LS_PREFIX.match(line):
            listing.prefixes.add(m.group(1))
        elif m := _LS_OBJECT.match(line):
            listing.objects[m.group(2)] = int(m.group(1))
        else:
            raise AssertionError(f"unexpected `aws s3 ls` line: {line!r}")
    return listing


def transfer_lines(out: str, verb: str) -> list[str]:
    """The destinations of ``upload:``/``download:``/``copy:``/``move:`` lines, or the
    targets of ``delete:`` lines."""
    found = []
    for line in out.splitlines():
        if not line.startswith(f"{verb}: "):
            continue
        rest = line[len(verb) + 2 :]
        found.append(rest if verb == "delete" else rest.rsplit(" to ", 1)[1])
    return sorted(found)


def sizes(tree: Tree) -> dict[str, int]:
    """Relative path -> size of every file of ``tree``."""
    return {rel: (tree.root / rel).stat().st_size for rel in tree.files}


class AwsCliCases:
    """Upload, list, download, copy, move, delete and sync with one aws-cli."""

    def test_cp_tree_up_list_and_down(
        self, cli: AwsCli, s3: Any, bucket: str, tree: Tree, tmp_path: Path
    ) -> None:
        out = cli.s3("cp", "--recursive", str(tree.root), f"s3://{bucket}/tree/")
        assert transfer_lines(out, "upload") == sorted(f"s3://{bucket}/tree/{rel}" for rel in tree.files)
        assert_same(remote_snapshot(s3, bucket, "tree/"), tree.files, "bucket after cp --recursive")

        objects = remote_objects(s3, bucket, "tree/")
        for rel in tree.files:
            etag = objects[f"tree/{rel}"]["ETag"]
            if rel == BIG_REL:
                assert etag == multipart_etag_of_file(tree.big_path, CHUNK), "multipart ETag"
            else:
                assert etag == f'"{md5_hex((tree.root / rel).read_bytes())}"', rel

        recursive = parse_ls(cli.s3("ls", "--recursive", f"s3://{bucket}/tree/"))
        assert recursive.prefixes == set()
        assert recursive.objects == {f"tree/{rel}": size for rel, size in sizes(tree).items()}
        top = parse_ls(cli.s3("ls", f"s3://{bucket}/tree/"))
        assert top.prefixes == {"big/", "data/", "with space/", "ünïcødé/"}
        assert top.objects == {"hello.txt": 700, "empty": 0}
        buckets = cli.s3("ls")
        assert re.search(rf"^\S+ \S+ {re.escape(bucket)}$", buckets, re.M), buckets

        dst = tmp_path / "down"
        out = cli.s3("cp", "--recursive", f"s3://{bucket}/tree/", str(dst))
        assert len(transfer_lines(out, "download")) == len(tree.files)
        assert_same(snapshot(dst), tree.files, "downloaded tree")

    def test_cp_s3_to_s3_copy_object(self, cli: AwsCli, s3: Any, bucket: str, small_tree: Tree) -> None:
        """Below 8 MiB an S3-to-S3 copy is one CopyObject per key."""
        seeded = upload_tree(s3, bucket, "src/", small_tree)
        s3.put_object(
            Bucket=bucket,
            Key="src/hello.txt",
            Body=b"typed",
            ContentType="text/x-typed",
            Metadata={"team": "storage"},
            Tagging="team=storage&tier=hot",
        )
        seeded["hello.txt"] = sha256(b"typed")

        cli.s3("cp", f"s3://{bucket}/src/hello.txt", f"s3://{bucket}/one/copy ✓.txt")
        got = s3.get_object(Bucket=bucket, Key="one/copy ✓.txt")
        assert got["Body"].read() == b"typed"
        assert got["ContentType"] == "text/x-typed"
        assert got["Metadata"] == {"team": "storage"}
        assert got["ETag"] == f'"{md5_hex(b"typed")}"'
        tags = s3.get_object_tagging(Bucket=bucket, Key="one/copy ✓.txt")["TagSet"]
        assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "storage"), ("tier", "hot")]

        out = cli.s3("cp", "--recursive", f"s3://{bucket}/src/", f"s3://{bucket}/all/")
        assert transfer_lines(out, "copy") == sorted(f"s3://{bucket}/all/{rel}" for rel in seeded)
        assert_same(remote_snapshot(s3, bucket, "all/"), seeded, "recursive copy")
        assert_same(remote_snapshot(s3, bucket, "src/"), seeded, "copy source afterwards")

    def test_cp_s3_to_s3_multipart(self, cli: AwsCli, s3: Any, bucket: str, tree: Tree) -> None:
        """From 8 MiB on, aws-cli copies with CreateMultipartUpload + UploadPartCopy ranges."""
        s3.put_object(Bucket=bucket, Key="src/big.bin", Body=tree.big_path.read_bytes())
        cli.s3("cp", f"s3://{bucket}/src/big.bin", f"s3://{bucket}/dst/big.bin")
        head = s3.head_object(Bucket=bucket, Key="dst/big.bin")
        assert head["ContentLength"] == tree.big_path.stat().st_size
        assert head["ETag"] == multipart_etag_of_file(tree.big_path, CHUNK)
        body = s3.get_object(Bucket=bucket, Key="dst/big.bin")["Body"].read()
        assert sha256(body) == tree.files[BIG_REL]

    def test_mv_local_s3_local(
        self, cli: AwsCli, s3: Any, bucket: str, small_tree: Tree, tmp_path: Path
    ) -> None:
        data = b"moved around \xe2\x9c\x93\n" * 100
        local = tmp_path / "to move ✓.txt"
        local.write_bytes(data)

        cli.s3("mv", str(local), f"s3://{bucket}/mv/one ✓.txt")  # PutObject, then unlink
        assert not local.exists()
        assert remote_keys(s3, bucket) == ["mv/one ✓.txt"]
        cli.s3("mv", f"s3://{bucket}/mv/one ✓.txt", f"s3://{bucket}/mv2/two.txt")  # CopyObject + Delete
        assert remote_keys(s3, bucket) == ["mv2/two.txt"]
        assert s3.get_object(Bucket=bucket, Key="mv2/two.txt")["Body"].read() == data
        back = tmp_path / "back" / "three.txt"
        cli.s3("mv", f"s3://{bucket}/mv2/two.txt", str(back))  # GetObject + DeleteObject
        assert remote_keys(s3, bucket) == []
        assert back.read_bytes() == data

        cli.s3("mv", "--recursive", str(small_tree.root), f"s3://{bucket}/tree/")
        assert snapshot(small_tree.root) == {}, "mv --recursive left local files behind"
        assert_same(remote_snapshot(s3, bucket, "tree/"), small_tree.files, "moved tree")

    def test_rm_recursive(self, cli: AwsCli, s3: Any, bucket: str, small_tree: Tree) -> None:
        upload_tree(s3, bucket, "tree/", small_tree)
        s3.put_object(Bucket=bucket, Key="tree-sibling.txt", Body=b"not under tree/")
        s3.put_object(Bucket=bucket, Key="keep/x", Body=b"x")
        txt = sorted(rel for rel in small_tree.files if rel.endswith(".txt"))
        assert len(txt) >= 3

        out = cli.s3("rm", "--recursive", f"s3://{bucket}/tree/", "--exclude", "*", "--include", "*.txt")
        assert transfer_lines(out, "delete") == sorted(f"s3://{bucket}/tree/{rel}" for rel in txt)
        left = sorted(f"tree/{rel}" for rel in small_tree.files if rel not in txt)
        assert remote_keys(s3, bucket) == sorted(["keep/x", "tree-sibling.txt", *left])

        cli.s3("rm", "--recursive", f"s3://{bucket}/tree/")
        assert remote_keys(s3, bucket) == ["keep/x", "tree-sibling.txt"]
        cli.s3("rm", f"s3://{bucket}/keep/x")
        assert remote_keys(s3, bucket) == ["tree-sibling.txt"]

    def test_sync_twice_then_delete(
        self, cli: AwsCli, s3: Any, bucket: str, tree: Tree, tmp_path: Path
    ) -> None:
        dest = f"s3://{bucket}/sync/"
        out = cli.s3("sync", str(tree.root), dest)
        assert transfer_lines(out, "upload") == sorted(dest + rel for rel in tree.files)
        before = remote_objects(s3, bucket, "sync/")

        out = cli.s3("sync", str(tree.root), dest)
        assert transfer_lines(out, "upload") == [], f"second sync uploaded again:\n{out}"
        assert remote_objects(s3, bucket, "sync/") == before, "second sync changed the bucket"

        m = mutate_tree(tree.root)
        out = cli.s3("sync", "--delete", str(tree.root), dest)
        assert transfer_lines(out, "upload") == sorted([dest + m.changed, dest + m.added])
        assert transfer_lines(out, "delete") == [dest + m.deleted]
        assert_same(remote_snapshot(s3, bucket, "sync/"), snapshot(tree.root), "bucket after sync --delete")
        after = remote_objects(s3, bucket, "sync/")
        untouched = set(tree.files) - {m.changed, m.deleted}
        assert {r: after[f"sync/{r}"] for r in untouched} == {r: before[f"sync/{r}"] for r in untouched}

        down = tmp_path / "down"
        (down / "stale dir").mkdir(parents=True)
        (down / "stale dir" / "stale.txt").write_bytes(b"only local")
        out = cli.s3("sync", "--delete", dest, str(down))
        deleted = [os.path.normpath(os.path.join(os.getcwd(), p)) for p in transfer_lines(out, "delete")]
        assert deleted == [str(down / "stale dir" / "stale.txt")]  # aws prints paths relative to cwd
        assert_same(snapshot(down), snapshot(tree.root), "local tree after sync --delete from S3")
