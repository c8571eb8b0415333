"""Builds the KEK provider the config asks for: ``kms.key = "local"`` is the keyring file in
``storage.data_dir`` (created on first use), anything else is an AWS KMS key id, ARN or
alias, reached at ``kms.endpoint`` (default: AWS) in ``kms.region``."""

from __future__ import annotations

from crypto import KEKProvider, LocalKeyring
from crypto.kms import AwsKmsProvider
from gateway.config import Config

KEYRING_FILE = "keyring.json"


async def open_kek(config: Config) -> KEKProvider:
    """An opened provider. KMS keys are resolved and checked now, so a wrong key, region
    or endpoint stops the start with a clear error instead of failing the first upload."""
    if config.kms.key == "local":
        return LocalKeyring.open_or_create(config.storage.data_dir / KEYRING_FILE)
    return await AwsKmsProvider.open(config.kms.key, region=config.kms.region, endpoint=config.kms.endpoint)


async def close_kek(kek: KEKProvider) -> None:
    """Release what the provider holds (the KMS client's connections); a no-op for a keyring."""
    if isinstance(kek, AwsKmsProvider):
        await kek.close()
