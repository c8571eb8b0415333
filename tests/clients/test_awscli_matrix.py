"""aws-cli 1.x (PyPI ``awscli``, ``.venv/bin/aws``) in the client matrix.

It bundles its own botocore: CRC32 checksum headers on every PUT and part, multipart
uploads and multipart copies (UploadPartCopy) from 8 MiB, ``Expect: 100-continue``.
``tests/integration/test_awscli.py`` covers large cp, sync and s3api; here the shared
matrix (:mod:`clients.awscli_cases`) adds mv in all three directions, S3-to-S3 cp
(CopyObject and multipart copy), ``rm --recursive`` with filters and ``sync --delete``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.clients import aws_cli_env, require_binary
from support.server import StrataServer

from clients.awscli_cases import AwsCli, AwsCliCases

AWS1 = str(Path(sys.executable).with_name("aws"))


@pytest.fixture
def cli(strata: StrataServer, tmp_path: Path) -> AwsCli:
    binary = require_binary(AWS1, "pip install -e '.[test]' installs awscli 1.x into the venv")
    env = aws_cli_env(tmp_path / "aws-config", strata.access_key, strata.secret_key, strata.region)
    return AwsCli(binary, strata.endpoint, env)


class TestAwsCli1(AwsCliCases):
    def test_version_is_1(self, cli: AwsCli) -> None:
        assert cli.version().startswith("aws-cli/1."), cli.version()
