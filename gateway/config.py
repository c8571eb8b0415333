"""The one typed configuration object, loaded from a TOML file and the environment.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), environment
variables, then command-line flags (applied by the CLI through :func:`with_overrides`).
Every field of section ``S`` named ``F`` can be set from the environment as
``STRATA_S_F`` (upper case), e.g. ``STRATA_SERVER_PORT``; the root credentials are
``STRATA_ROOT_ACCESS_KEY`` and ``STRATA_ROOT_SECRET_KEY``, and ``STRATA_KMS`` is short for
``STRATA_KMS_KEY``. Secret-bearing fields are left out of ``repr``. The object is passed down
explicitly; nothing reads configuration from globals.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP listener."""

    host: str = "127.0.0.1"
    port: int = 9000
    tls_cert: str | None = None
    tls_key: str | None = None
    region: str = "us-east-1"
    # Host names under which virtual-host addressing (bucket.DOMAIN) is recognised.
    domains: tuple[str, ...] = ("localhost", "127.0.0.1", "s3.localhost")
    max_clock_skew_seconds: int = 900
    # CompleteMultipartUpload answers 200 and sends whitespace every this many seconds while
    # the completion runs longer than that (as S3 does), so clients don't time out.
    complete_keepalive_seconds: float = 5.0
    # Once no request has been in flight for this long, and the process's anonymous memory
    # grew since it last did so, free heap memory goes back to the kernel (gateway/memory.py).
    # 0 = never.
    idle_trim_seconds: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    """Where data lives and how uploads are cut, packed and compressed."""

    data_dir: Path = Path("strata-data")
    chunk_min: int = 256 * 1024
    chunk_avg: int = 1 * MiB
    chunk_max: int = 4 * MiB
    pack_target: int = 16 * MiB
    # Objects whose new data is at most this size are group-committed into shared packs.
    small_object_max: int = 1 * MiB
    # Whole objects (not multipart parts) of at most this many bytes are sealed into their
    # manifest in the metadata store: no pack, no chunk index row, no dedup. 0 turns it off.
    inline_max: int = 16 * 1024
    zstd_level: int = 1
    # Size of an upload's batch buffer: the chunker's carry from the last batch, then bytes
    # copied once from the network; it is cut in place. An upload holds about one batch
    # while it waits for a slot and two while it holds one, so this sets memory per upload
    # (16 concurrent uploads: ~20 MiB of peak RSS per MiB of batch). Every batch copies and
    # re-scans its carry (about one chunk), so smaller batches cost more CPU per MB: 4 MiB
    # needs ~5% less than 3 MiB, and 16 concurrent 1 GiB PUTs peak at ~220 MiB of RSS
    # (bench/README.md run K).
    ingest_batch: int = 4 * MiB
    # Batches processed (cut + sealed + written) at once across all uploads.
    ingest_slots: int = 4
    # GET: adjacent records of a pack are fetched with one read of at most read_run bytes,
    # and read_ahead such runs are fetched and decoded ahead of the response stream.
    read_run: int = 4 * MiB
    read_ahead: int = 3
    # GET: plaintext bytes that all GETs together may decode beyond each one's next run (the
    # read-ahead past it). Many concurrent GETs then read ahead less instead of holding
    # read_ahead runs each.
    read_ahead_budget: int = 64 * MiB
    # GET: decoded chunks kept in memory (bytes, 0 = off), see gateway/chunkcache.py: zstd
    # chunks, and every chunk on remote backends. Concurrent GETs of a chunk decode it once.
    chunk_cache: int = 64 * MiB
    # GET, local packs: memory maps of the most recently read packs kept for their next
    # reads, up to this many bytes of packs (0 = map each run on its own), see
    # gateway/backends/blob_maps.py. Their touched pages count in RSS as file pages.
    map_cache: int = 64 * MiB
    # Worker threads for CPU stages (hashing, zstd, AES-GCM). 0 = one per core.
    workers: int = 0
    # Threads that move large bodies between client sockets and buffers without holding the
    # GIL: GET bodies out (gateway/socket_send.py), raw PUT/UploadPart bodies of 8 MiB or
    # more in (gateway/socket_recv.py). 0 = the event loop moves every byte itself.
    send_threads: int = 8
    max_put_size: int = 5 * 1024 * MiB  # single PUT and each multipart part, as S3
    # Local packs (the embedded backend) are written with O_DIRECT, past the page cache: on
    # VMs where fresh guest pages are dear, large PUTs need ~40% less CPU, but a new pack is
    # read from the disk, not the page cache, the first time (bench/README.md, session 7).
    direct_writes: bool = False
    # Local packs (the embedded backend): the most recently written this many bytes stay in
    # the page cache; older packs are dropped from it, so new writes reuse warm pages instead
    # of growing the cache (gateway/backends/page_cache.py). 0 = the kernel keeps everything.
    write_cache_window: int = 1024 * MiB

    @property
    def cpu_workers(self) -> int:
        """Threads for CPU stages: ``workers``, or one per core."""
        return self.workers or (os.cpu_count() or 2)


@dataclass(frozen=True)
class MetaConfig:
    """Where metadata lives. No DSNs: the embedded SQLite file in ``storage.data_dir``.
    With DSNs (``STRATA_META_DSNS``, comma-separated): sharded PostgreSQL, the first DSN
    being the catalog shard."""

    dsns: tuple[str, ...] = field(default=(), repr=False)  # DSNs may carry passwords
    pool_min: int = 1
    pool_max: int = 16
    command_timeout: float = 10.0


@dataclass(frozen=True)
class RedisConfig:
    """The shared cache (version lookups, manifests, share tokens). No URL: an in-process
    LRU for the embedded default, and no cache at all with ``meta.dsns`` (several processes
    share that store, and a process-local cache would serve stale versions). The cache is an
    accelerator only: when Redis is unreachable answers stay correct."""

    url: str | None = field(default=None, repr=False)
    prefix: str = "strata:"
    ttl_seconds: int = 300
    socket_timeout: float = 0.25


@dataclass(frozen=True)
class KafkaConfig:
    """Event publishing. No bootstrap servers: events stay in the metadata outbox."""

    bootstrap: str | None = None
    topic: str = "strata-events"  # default topic; buckets may choose their own
    relay_batch: int = 500
    relay_interval: float = 0.2  # seconds between outbox polls when idle
    # Seconds an outbox row is kept (0 = forever). With a broker only published rows expire;
    # without one nothing reads the outbox, so every row this old goes (gateway/events.py).
    outbox_retention: float = 7 * 86400.0


@dataclass(frozen=True)
class BackendConfig:
    """Where packs are stored. No endpoint and no bucket: ``storage.data_dir``/blobs.
    Otherwise an S3 bucket per tier (warm and cold default to the hot bucket)."""

    endpoint: str | None = None
    bucket: str | None = None
    warm_bucket: str | None = None
    cold_bucket: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    connect_timeout: float = 2.0
    read_timeout: float = 5.0  # with connect_timeout: the whole budget of one backend call
    max_attempts: int = 4  # per request, with exponential backoff and full jitter
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    breaker_failures: int = 5  # consecutive failures that open the circuit breaker
    breaker_reset_seconds: float = 5.0  # open -> half-open after this long
    # Optional replica: packs are copied to it asynchronously; reads fall back to it.
    replica_endpoint: str | None = None
    replica_bucket: str | None = None
    replica_access_key: str | None = field(default=None, repr=False)
    replica_secret_key: str | None = field(default=None, repr=False)
    replica_region: str = "us-east-1"


@dataclass(frozen=True)
class KmsConfig:
    """The master key (KEK) provider: ``local`` (a keyring file in ``storage.data_dir``) or
    an AWS KMS key ARN or alias. ``STRATA_KMS`` sets ``key``."""

    key: str = "local"
    endpoint: str | None = None
    region: str = "us-east-1"


@dataclass(frozen=True)
class GcConfig:
    """Garbage collection of unreferenced chunks and repacking of sparse packs."""

    grace_seconds: float = 86400.0  # an unreferenced chunk is reclaimed only after this long
    interval_seconds: float = 0.0  # run inside ``strata serve`` this often; 0 = never
    repack_threshold: float = 0.5  # repack packs whose live share is below this


@dataclass(frozen=True)
class LogConfig:
    """Request logs (one JSON line per request) and the audit log."""

    level: str = "INFO"
    format: str = "json"  # json | text
    audit: bool = True  # audit records for every mutation and download


@dataclass(frozen=True)
class RootConfig:
    """The root user's credentials; generated and stored on first start when unset."""

    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Config:
    """Everything a Strata process needs to know, in one object."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    root: RootConfig = field(default_factory=RootConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    kms: KmsConfig = field(default_factory=KmsConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value == ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer")
        return int(value)
    if hint is float:
        return float(value)
    if hint is Path:
        return Path(value)
    if hint is str:
        return str(value)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(str(i).strip() for i in items if str(i).strip())
    raise ValueError(f"{name}: unsupported type {hint!r}")


def _section(cls: type, values: Mapping[str, Any], env: Mapping[str, str], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys in [{section}]: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{section}.{f.name}"
        env_name = f"STRATA_{section}_{f.name}".upper()
        if env_name in env:
            kwargs[f.name] = _coerce(env[env_name], hints[f.name], name)
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], hints[f.name], name)
    return cls(**kwargs)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load defaults, then ``path`` (TOML) if given, then environment overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(data) - set(sections)
    if unknown:
        raise ValueError(f"unknown config sections: {', '.join(sorted(unknown))}")
    if "STRATA_KMS" in env and "STRATA_KMS_KEY" not in env:
        env = {**env, "STRATA_KMS_KEY": env["STRATA_KMS"]}
    hints = typing.get_type_hints(Config)
    built = {name: _section(hints[name], data.get(name, {}), env, name) for name in sections}
    return Config(**built)


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """Return ``config`` with the non-None values in ``sections`` replaced (CLI flags)."""
    changed: dict[str, Any] = {}
    for name, values in sections.items():
        current = getattr(config, name)
        hints = typing.get_type_hints(type(current))
        updates = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items() if v is not None}
        changed[name] = dataclasses.replace(current, **updates)
    return dataclasses.replace(config, **changed)
