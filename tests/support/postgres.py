"""PostgreSQL for tests: fresh databases on the test server, dropped afterwards.

* :class:`PgServer` is the server the tests use: 127.0.0.1:5432 (trust auth, user
  ``postgres``) when something listens there; otherwise a private cluster started with
  ``initdb`` / ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` (as user ``postgres`` when run as
  root) on a free port with ``fsync=off``, stopped and removed at the end of the session.
* :meth:`PgServer.create_databases` makes databases named ``strata_t_<random>_<i>`` and
  returns their DSNs; :meth:`PgServer.drop_databases` drops them (``WITH (FORCE)``).
* Fixtures: ``pg_server`` (session), ``pg4_dsns`` (session: four migrated databases, one
  per shard), ``pg_databases`` (a factory of unmigrated databases, dropped after the test).
  Import them into a test module or conftest to use them.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from gateway.config import MetaConfig
from gateway.meta import pg_migrations

from .server import free_port

T = TypeVar("T")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5432


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private event loop (callable from any context)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PgServer:
    """A PostgreSQL server for tests (the shared one, or a private cluster)."""

    def __init__(self, host: str, port: int, base: Path | None = None) -> None:
        self.host = host
        self.port = port
        self._base = base  # the private cluster's directory, None for the shared server

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @classmethod
    def start(cls) -> PgServer:
        """The shared server when it listens, else a private cluster."""
        if listening(DEFAULT_HOST, DEFAULT_PORT):
            return cls(DEFAULT_HOST, DEFAULT_PORT)
        return cls._private_cluster()

    @classmethod
    def _private_cluster(cls) -> PgServer:
        bin_dir = _pg_bin()
        base = Path(tempfile.mkdtemp(prefix="strata-pg-"))
        as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(base, "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        port = free_port()
        data = base / "data"
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {base} -c listen_addresses={DEFAULT_HOST} -c fsync=off"
        subprocess.run(
            [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
             "-w", "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cls(DEFAULT_HOST, port, base)

    def stop(self) -> None:
        if self._base is None:
            return
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                *as_postgres,
                str(_pg_bin() / "pg_ctl"),
                "-D",
                str(self._base / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self._base, ignore_errors=True)

    async def _admin(self, statements: list[str]) -> None:
        conn = await asyncpg.connect(self.dsn("postgres"), timeout=10)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    def create_databases(self, n: int) -> list[str]:
        """``n`` empty databases ``strata_t_<random>_<i>``; returns their names. Their default
        collation is ICU ``en-US`` (case-insensitive-ish, accent-aware), as on many
        production servers, so a key column that forgets ``COLLATE "C"`` lists out of order."""
        tag = secrets.token_hex(4)
        names = [f"strata_t_{tag}_{i}" for i in range(n)]
        run_async(self._admin([
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
            "LOCALE 'C.UTF-8'"
            for name in names
        ]))  # fmt: skip
        return names

    def drop_databases(self, names: list[str]) -> None:
        run_async(self._admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names]))


async def _truncate_all(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'strata_schema'"
        )
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(t[0] for t in tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


def reset_databases(dsns: tuple[str, ...]) -> None:
    """Empty every table but the schema record (keeps the migrated schema)."""

    async def all_of() -> None:
        await asyncio.gather(*(_truncate_all(d) for d in dsns))

    run_async(all_of())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg4_dsns(pg_server: PgServer) -> Iterator[tuple[str, ...]]:
    """Four fresh databases, migrated as shards 0..3 (dropped at the end of the session)."""
    names = pg_server.create_databases(4)
    dsns = tuple(pg_server.dsn(n) for n in names)
    try:
        run_async(pg_migrations.migrate(MetaConfig(dsns=dsns)))
        yield dsns
    finally:
        pg_server.drop_databases(names)


@pytest.fixture
def pg_databases(pg_server: PgServer) -> Iterator[Callable[[int], tuple[str, ...]]]:
    """A factory of fresh, unmigrated databases (DSNs), all dropped after the test."""
    made: list[str] = []

    def make(n: int) -> tuple[str, ...]:
        names = pg_server.create_databases(n)
        made.extend(names)
        return tuple(pg_server.dsn(name) for name in names)

    yield make
    if made:
        pg_server.drop_databases(made)
