"""The AWS KMS KEK provider against moto's KMS served over HTTP (ThreadedMotoServer): round
trips, alias resolution, encryption-context binding, clear errors, rotation to another key,
and no key material in the logs."""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from crypto import IntegrityError, LocalKeyring, UnknownKEKError, WrappedKey, rewrap
from crypto.kms import AwsKmsProvider, KmsError
from gateway.config import Config, KmsConfig, StorageConfig
from gateway.kek import close_kek, open_kek

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials for the standard AWS chain (moto accepts any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def kms(moto_url: str) -> Any:
    return boto3.client("kms", region_name=REGION, endpoint_url=moto_url)


@pytest.fixture
def key_arn(kms: Any) -> str:
    return str(kms.create_key(Description="strata test")["KeyMetadata"]["Arn"])


@pytest.fixture
async def provider(key_arn: str, moto_url: str) -> AsyncIterator[AwsKmsProvider]:
    opened = await AwsKmsProvider.open(key_arn, region=REGION, endpoint=moto_url)
    yield opened
    await opened.close()


async def test_wrap_unwrap_round_trip(provider: AwsKmsProvider, key_arn: str) -> None:
    dek = os.urandom(32)
    wrapped = await provider.wrap(dek)
    assert wrapped.kek_id == key_arn and wrapped.kek_version == 1 == provider.current_version
    assert dek not in wrapped.blob
    assert await provider.unwrap(wrapped) == dek
    assert provider.versions() == [1]
    assert await rewrap(provider, wrapped) is wrapped  # already under the current key


async def test_alias_resolves_to_the_key_arn(kms: Any, key_arn: str, moto_url: str) -> None:
    alias = f"alias/strata-{secrets.token_hex(4)}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_arn)
    by_alias = await AwsKmsProvider.open(alias, region=REGION, endpoint=moto_url)
    by_arn = await AwsKmsProvider.open(key_arn, region=REGION, endpoint=moto_url)
    try:
        assert by_alias.kek_id == key_arn  # wraps record the key, never the alias
        wrapped = await by_alias.wrap(b"k" * 32)
        assert await by_arn.unwrap(wrapped) == b"k" * 32
    finally:
        await by_alias.close()
        await by_arn.close()


async def test_a_blob_made_with_another_encryption_context_does_not_unwrap(
    provider: AwsKmsProvider, kms: Any, key_arn: str
) -> None:
    blob = kms.encrypt(KeyId=key_arn, Plaintext=b"k" * 32, EncryptionContext={"strata": "other"})[
        "CiphertextBlob"
    ]
    with pytest.raises(IntegrityError):
        await provider.unwrap(WrappedKey(key_arn, 1, blob))
    plain = kms.encrypt(KeyId=key_arn, Plaintext=b"k" * 32)["CiphertextBlob"]  # no context at all
    with pytest.raises(IntegrityError):
        await provider.unwrap(WrappedKey(key_arn, 1, plain))


async def test_a_tampered_blob_does_not_unwrap(provider: AwsKmsProvider) -> None:
    wrapped = await provider.wrap(b"k" * 32)
    bad = bytearray(wrapped.blob)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        await provider.unwrap(WrappedKey(wrapped.kek_id, 1, bytes(bad)))


async def test_missing_key_is_a_clear_error(moto_url: str) -> None:
    with pytest.raises(UnknownKEKError, match=r"alias/no-such-key.*not found"):
        await AwsKmsProvider.open("alias/no-such-key", region=REGION, endpoint=moto_url)
    missing = f"arn:aws:kms:{REGION}:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(UnknownKEKError, match="not found"):
        await AwsKmsProvider.open(missing, region=REGION, endpoint=moto_url)


async def test_unusable_keys_and_endpoints_are_clear_errors(kms: Any, moto_url: str) -> None:
    disabled = kms.create_key()["KeyMetadata"]
    kms.disable_key(KeyId=disabled["KeyId"])
    with pytest.raises(KmsError, match="Disabled"):
        await AwsKmsProvider.open(disabled["Arn"], region=REGION, endpoint=moto_url)
    signing = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["Arn"]
    with pytest.raises(KmsError, match="ENCRYPT_DECRYPT"):
        await AwsKmsProvider.open(signing, region=REGION, endpoint=moto_url)
    with pytest.raises(KmsError, match="unreachable"):
        await AwsKmsProvider.open("alias/x", region=REGION, endpoint="http://127.0.0.1:1", max_attempts=1)


async def test_wraps_of_a_local_keyring_are_refused(provider: AwsKmsProvider, tmp_path: Path) -> None:
    local = LocalKeyring.open_or_create(tmp_path / "keyring.json")
    with pytest.raises(UnknownKEKError, match="not a KMS key"):
        await provider.unwrap(await local.wrap(b"k" * 32))


async def test_rotation_to_another_kms_key_rewraps(provider: AwsKmsProvider, kms: Any, moto_url: str) -> None:
    old = await provider.wrap(b"d" * 32)
    new_key = kms.create_key()["KeyMetadata"]["Arn"]
    rotated = await AwsKmsProvider.open(new_key, region=REGION, endpoint=moto_url)
    try:
        assert await rotated.unwrap(old) == b"d" * 32  # still readable under the new config
        moved = await rewrap(rotated, old)
        assert moved.kek_id == new_key and await rotated.unwrap(moved) == b"d" * 32
        tampered_id = WrappedKey(new_key, 1, old.blob)  # a blob filed under the wrong key
        with pytest.raises((IntegrityError, KmsError)):  # AWS: IncorrectKeyException; moto: AccessDenied
            await rotated.unwrap(tampered_id)
    finally:
        await rotated.close()


async def test_no_key_material_in_logs_even_at_debug(
    provider: AwsKmsProvider, caplog: pytest.LogCaptureFixture
) -> None:
    dek = os.urandom(32)
    with caplog.at_level(logging.DEBUG):
        assert await provider.unwrap(await provider.wrap(dek)) == dek
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "OperationModel(name=Decrypt)" in text  # botocore did log at DEBUG ...
    assert base64.b64encode(dek).decode() not in text and dek.hex() not in text  # ... but no DEK


async def test_open_kek_picks_the_provider(tmp_path: Path, key_arn: str, moto_url: str) -> None:
    local = await open_kek(Config(storage=StorageConfig(data_dir=tmp_path)))
    assert isinstance(local, LocalKeyring) and (tmp_path / "keyring.json").exists()
    remote = await open_kek(
        Config(storage=StorageConfig(data_dir=tmp_path / "x"), kms=KmsConfig(key=key_arn, endpoint=moto_url))
    )
    try:
        assert isinstance(remote, AwsKmsProvider) and remote.kek_id == key_arn
        assert not (tmp_path / "x" / "keyring.json").exists()
    finally:
        await close_kek(remote)
        await close_kek(local)
