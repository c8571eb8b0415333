"""aws-cli 2 from Debian (``apt-get install awscli``, called as ``/usr/bin/aws`` so that it
never shadows the venv's aws-cli 1) in the client matrix.

Debian bookworm ships 2.9.19. It sends Content-MD5 (no CRC32 headers), splits at 8 MiB
like aws-cli 1, and, unlike aws-cli 1, an S3-to-S3 copy of a multipart-sized object also
copies the source's tags (``--copy-props default``): GetObjectTagging, then the tags as
``x-amz-tagging`` on CreateMultipartUpload, which the server applies on completion.
``--copy-props metadata-directive`` (no tagging call) is checked as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.clients import aws_cli_env, require_binary
from support.s3 import multipart_etag_of_file
from support.server import StrataServer
from support.trees import BIG_REL, Tree, sha256

from clients.awscli_cases import CHUNK, AwsCli, AwsCliCases

AWS2 = "/usr/bin/aws"


@pytest.fixture
def cli(strata: StrataServer, tmp_path: Path) -> AwsCli:
    binary = require_binary(AWS2, "apt-get install -y --no-install-recommends awscli")
    env = aws_cli_env(tmp_path / "aws-config", strata.access_key, strata.secret_key, strata.region)
    return AwsCli(binary, strata.endpoint, env)


class TestAwsCli2(AwsCliCases):
    def test_version_is_2(self, cli: AwsCli) -> None:
        assert cli.version().startswith("aws-cli/2."), cli.version()

    def test_cp_s3_to_s3_multipart_without_tags(self, cli: AwsCli, s3: Any, bucket: str, tree: Tree) -> None:
        """``--copy-props metadata-directive``: HeadObject for the metadata, no tagging call."""
        s3.put_object(
            Bucket=bucket,
            Key="src/big.bin",
            Body=tree.big_path.read_bytes(),
            ContentType="application/x-big",
            Metadata={"origin": "matrix"},
        )
        cli.s3(
            "cp",
            "--copy-props",
            "metadata-directive",
            f"s3://{bucket}/src/big.bin",
            f"s3://{bucket}/dst/big.bin",
        )
        head = s3.head_object(Bucket=bucket, Key="dst/big.bin")
        assert head["ETag"] == multipart_etag_of_file(tree.big_path, CHUNK)
        assert head["ContentType"] == "application/x-big"
        assert head["Metadata"] == {"origin": "matrix"}
        body = s3.get_object(Bucket=bucket, Key="dst/big.bin")["Body"].read()
        assert sha256(body) == tree.files[BIG_REL]

    def test_cp_s3_to_s3_multipart_keeps_tags(self, cli: AwsCli, s3: Any, bucket: str, tree: Tree) -> None:
        s3.put_object(
            Bucket=bucket, Key="src/big.bin", Body=tree.big_path.read_bytes(), Tagging="team=storage"
        )
        cli.s3("cp", f"s3://{bucket}/src/big.bin", f"s3://{bucket}/dst/big.bin")
        assert sha256(s3.get_object(Bucket=bucket, Key="dst/big.bin")["Body"].read()) == tree.files[BIG_REL]
        tags = s3.get_object_tagging(Bucket=bucket, Key="dst/big.bin")["TagSet"]
        assert tags == [{"Key": "team", "Value": "storage"}]
