"""Shared fixtures: real Strata server processes and clients pointed at them.

* ``strata`` / ``strata_tls``: one plain-HTTP and one HTTPS server for the whole session,
  each with a fresh data directory (the TLS one uses a throwaway self-signed certificate).
* ``s3`` / ``s3_tls``: boto3 clients for them (path style, SigV4, no retries; https with
  ``verify=False``).
* ``bucket`` / ``tls_bucket``: a fresh bucket per test, emptied and deleted afterwards.
* ``strata_factory``: start extra servers with their own fresh data directory (tests that
  measure backend bytes or memory use one so that nothing else shares the server).

When a test fails, the tail of every running server's stderr is attached to the report.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.s3 import delete_bucket_recursive, make_client, unique_bucket
from support.seaweed import seaweed
from support.server import StrataServer, make_self_signed_cert

__all__ = ["seaweed"]  # session fixture: one SeaweedFS for every test that asks
_RUNNING: list[StrataServer] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (large uploads, memory bounds)")
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed and _RUNNING:
        for server in _RUNNING:
            state = (
                "running" if server.is_running() else f"EXITED rc={server.proc and server.proc.returncode}"
            )
            report.sections.append(
                (f"strata {server.endpoint} ({state}) stderr tail", server.stderr_text(limit=4000))
            )
    return report


def _start(server: StrataServer) -> StrataServer:
    server.start()
    _RUNNING.append(server)
    return server


def _stop(server: StrataServer) -> None:
    crashed = not server.is_running()
    rc = server.stop()
    if server in _RUNNING:
        _RUNNING.remove(server)
    if crashed:
        pytest.fail(f"strata at {server.endpoint} died during the tests (rc={rc}):\n{server.stderr_text()}")


@pytest.fixture(scope="session")
def strata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrataServer]:
    base = tmp_path_factory.mktemp("strata-http")
    server = _start(StrataServer(base / "data", log_path=base / "server.log"))
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def strata_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_cert: tuple[Path, Path]
) -> Iterator[StrataServer]:
    base = tmp_path_factory.mktemp("strata-https")
    server = _start(StrataServer(base / "data", log_path=base / "server.log", tls=tls_cert))
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def s3(strata: StrataServer) -> Any:
    return make_client(strata)


@pytest.fixture(scope="session")
def s3_tls(strata_tls: StrataServer) -> Any:
    return make_client(strata_tls)


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = unique_bucket()
    s3.create_bucket(Bucket=name)
    yield name
    delete_bucket_recursive(s3, name)


@pytest.fixture
def tls_bucket(s3_tls: Any) -> Iterator[str]:
    name = unique_bucket("tls")
    s3_tls.create_bucket(Bucket=name)
    yield name
    delete_bucket_recursive(s3_tls, name)


@pytest.fixture
def strata_factory(tmp_path: Path) -> Iterator[Callable[..., StrataServer]]:
    """Start fresh servers (each with its own empty data dir); all are stopped afterwards."""
    started: list[StrataServer] = []

    def factory(**kwargs: Any) -> StrataServer:
        n = len(started)
        server = _start(StrataServer(tmp_path / f"data{n}", log_path=tmp_path / f"server{n}.log", **kwargs))
        started.append(server)
        return server

    yield factory
    for server in started:
        _stop(server)
