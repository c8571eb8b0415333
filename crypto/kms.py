"""AWS KMS as the :class:`~crypto.kek.KEKProvider` (the production master key).

This module owns DEK wrapping through a KMS symmetric key: ``Encrypt`` / ``Decrypt`` over
aiobotocore (the asyncio botocore that aioboto3 wraps), against AWS or any service speaking
the KMS API (``endpoint``). Credentials come from the standard AWS chain (environment,
shared config, instance or task role); nothing here reads or logs them. DEKs are never
logged, not even by botocore at DEBUG level (a filter drops its records that carry one).

What a wrap records
-------------------
* ``kek_id`` is the **key ARN** that :meth:`AwsKmsProvider.open` resolved the configured key
  to (a key id, key ARN, alias name ``alias/…`` or alias ARN). Aliases are resolved once, at
  start: re-pointing an alias takes effect on the next start, and wraps made under the old
  key keep naming it.
* ``kek_version`` is always ``1``. KMS rotates a key's backing material itself: the
  ciphertext blob names the backing version and ``Decrypt`` picks it, so no rotation inside
  one KMS key is ever visible to (or needs anything from) Strata. A Strata-level rotation
  with KMS is a switch to *another* key (new ``kek_id``); :func:`crypto.kek.rewrap` then
  re-wraps every DEK whose ``kek_id`` differs from the current key.
* ``blob`` is the KMS ``CiphertextBlob``.

Every call passes the encryption context ``{"strata": "kek-wrap/1"}`` (bound into the
ciphertext by KMS, visible in CloudTrail), and ``Decrypt`` names the key the wrap recorded,
so a blob from another key or another purpose fails as :class:`~crypto.errors.IntegrityError`.
Unwrapping a DEK wrapped under an earlier KMS key works as long as this gateway may still
call ``kms:Decrypt`` on it; one wrapped by a local keyring is refused with
:class:`~crypto.errors.UnknownKEKError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crypto.errors import CryptoError, IntegrityError, UnknownKEKError
from crypto.kek import WrappedKey

log = logging.getLogger(__name__)

KMS_KEK_VERSION = 1
ENCRYPTION_CONTEXT = {"strata": "kek-wrap/1"}
MAX_PLAINTEXT = 4096  # KMS Encrypt's limit


class _DropKeyMaterial(logging.Filter):
    """botocore logs request params and response bodies at DEBUG: for KMS they hold DEKs
    (``Plaintext``). Drop those records, so a gateway at log level DEBUG leaks no key."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or "Plaintext" not in record.getMessage()


_KEY_MATERIAL_FILTER = _DropKeyMaterial()
for _name in ("botocore.endpoint", "botocore.parsers", "aiobotocore.endpoint", "aiobotocore.parsers"):
    logging.getLogger(_name).addFilter(_KEY_MATERIAL_FILTER)  # idempotent


class KmsError(CryptoError):
    """KMS refused or could not be reached (disabled key, no permission, network, …)."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_kms_key_arn(kek_id: str) -> bool:
    parts = kek_id.split(":", 5)
    return len(parts) == 6 and parts[0] == "arn" and parts[2] == "kms" and parts[5].startswith("key/")


def check_key_metadata(key: str, meta: dict[str, Any]) -> str:
    """The key ARN from a ``DescribeKey`` answer, or a clear error if the key cannot wrap."""
    arn = meta.get("Arn")
    if not isinstance(arn, str) or not _is_kms_key_arn(arn):
        raise KmsError(f"KMS key {key!r}: DescribeKey returned no key ARN")
    if meta.get("KeyState", "Enabled") != "Enabled":
        raise KmsError(f"KMS key {arn} is {meta.get('KeyState')}, not Enabled")
    if meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
        raise KmsError(f"KMS key {arn} has usage {meta.get('KeyUsage')}; it must be ENCRYPT_DECRYPT")
    spec = meta.get("KeySpec", meta.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"))
    if spec != "SYMMETRIC_DEFAULT":
        raise KmsError(f"KMS key {arn} is {spec}; it must be a SYMMETRIC_DEFAULT key")
    return arn


class AwsKmsProvider:
    """Wraps DEKs with one KMS key. Build it with :meth:`open`; :meth:`close` it when done."""

    def __init__(self, client: Any, key_arn: str, stack: contextlib.AsyncExitStack) -> None:
        self._client = client
        self._arn = key_arn
        self._stack = stack

    @classmethod
    async def open(
        cls,
        key: str,
        *,
        region: str,
        endpoint: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_attempts: int = 3,
    ) -> AwsKmsProvider:
        """Connect, resolve ``key`` (id, ARN or alias) to its key ARN and check that it is an
        enabled symmetric encryption key."""
        if not key or key == "local":
            raise ValueError(f"not a KMS key: {key!r}")
        # aiobotocore (~18 MiB of the process) loads only when a KMS key is configured.
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        stack = contextlib.AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                get_session().create_client("kms", region_name=region, endpoint_url=endpoint, config=config)
            )
            where = f"in {region}" + (f" at {endpoint}" if endpoint else "")
            try:
                meta = (await client.describe_key(KeyId=key))["KeyMetadata"]
            except ClientError as e:
                if _code(e) == "NotFoundException":
                    raise UnknownKEKError(f"KMS key {key!r} not found {where}") from None
                raise KmsError(f"KMS DescribeKey({key!r}) {where} failed: {_code(e)}: {e}") from None
            except BotoCoreError as e:
                raise KmsError(f"KMS {where} unreachable: {type(e).__name__}: {e}") from None
            arn = check_key_metadata(key, meta)
        except BaseException:
            await stack.aclose()
            raise
        log.info("KEK provider: KMS key %s %s", arn, where)
        return cls(client, arn, stack)

    @property
    def kek_id(self) -> str:
        return self._arn

    @property
    def current_version(self) -> int:
        return KMS_KEK_VERSION

    def versions(self) -> list[int]:
        return [KMS_KEK_VERSION]

    async def wrap(self, plaintext: bytes) -> WrappedKey:
        if not 0 < len(plaintext) <= MAX_PLAINTEXT:
            raise ValueError(f"refusing to wrap {len(plaintext)} bytes (expected a key)")
        reply = await self._call(
            "Encrypt",
            self._client.encrypt,
            KeyId=self._arn,
            Plaintext=bytes(plaintext),
            EncryptionContext=ENCRYPTION_CONTEXT,
        )
        return WrappedKey(self._arn, KMS_KEK_VERSION, reply["CiphertextBlob"])

    async def unwrap(self, wrapped: WrappedKey) -> bytes:
        if not _is_kms_key_arn(wrapped.kek_id):
            raise UnknownKEKError(
                f"key is wrapped by KEK {wrapped.kek_id!r}, which is not a KMS key "
                f"(this gateway uses {self._arn})"
            )
        if wrapped.kek_version != KMS_KEK_VERSION:
            raise UnknownKEKError(f"KMS wraps have kek_version {KMS_KEK_VERSION}, not {wrapped.kek_version}")
        reply = await self._call(
            "Decrypt",
            self._client.decrypt,
            CiphertextBlob=wrapped.blob,
            KeyId=wrapped.kek_id,
            EncryptionContext=ENCRYPTION_CONTEXT,
        )
        return bytes(reply["Plaintext"])

    @staticmethod
    async def _call(
        operation: str, method: Callable[..., Awaitable[dict[str, Any]]], **params: Any
    ) -> dict[str, Any]:
        """``method(**params)`` with KMS's errors mapped onto the crypto package's."""
        key = params["KeyId"]
        try:
            return await method(**params)
        except ClientError as e:
            code = _code(e)
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise IntegrityError(
                    f"KMS {operation}: the wrapped key does not belong to {key} ({code})"
                ) from None
            if code == "NotFoundException":
                raise UnknownKEKError(f"KMS {operation}: key {key} not found") from None
            raise KmsError(f"KMS {operation} with {key} failed: {code}: {e}") from None
        except BotoCoreError as e:
            raise KmsError(f"KMS {operation} with {key}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        await self._stack.aclose()

    def __repr__(self) -> str:
        return f"AwsKmsProvider({self._arn!r})"
