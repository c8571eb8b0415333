"""The embedded default loads no driver it does not use.

aiobotocore (S3 backend, KMS), redis (shared cache), asyncpg (sharded PostgreSQL) and aiokafka are
imported when the config builds the component that needs them, at start-up: never on first
use, where the import (~0.25 s holding the GIL) would stall the event loop in the middle of
traffic, long enough to time out the Redis cache's calls. Loading them all made the idle embedded server
86 MiB of RSS instead of 66, and upload memory is bounded against the total (bench/README.md
run K). The first test runs `strata serve`'s start-up path (the command-line parser with
every command registered, the runtime, the app) in a fresh interpreter and reads its
``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

DRIVERS = ("aiobotocore", "redis", "asyncpg", "aiokafka")

_SERVE_PATH = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from aiohttp import web
    from gateway.cli import build_parser
    from gateway.config import Config, StorageConfig

    async def main() -> None:
        from gateway.app import build_app
        from gateway.runtime import Runtime

        build_parser()  # registers every command module, as `strata serve` does
        rt = await Runtime.open(Config(storage=StorageConfig(data_dir=Path(sys.argv[1]))))
        runner = web.AppRunner(build_app(rt))
        await runner.setup()
        await runner.cleanup()

    asyncio.run(main())
    print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
    """
)


def _run(script: str, *args: str) -> Any:
    """What ``script``, run in a fresh interpreter, printed last (as JSON)."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_embedded_default_starts_without_optional_drivers(tmp_path: Path) -> None:
    loaded = set(_run(_SERVE_PATH, str(tmp_path)))
    assert "aiohttp" in loaded and "gateway" in loaded  # the script did run the serve path
    assert loaded.isdisjoint(DRIVERS), sorted(loaded.intersection(DRIVERS))


def test_each_driver_loads_when_its_component_is_built(tmp_path: Path) -> None:
    """The imports moved, they did not vanish: building each component (what start-up
    does; nothing here connects anywhere) loads its driver."""
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from gateway.backends.s3 import S3BlobBackend, S3Settings
        from gateway.cache import RedisCache
        from gateway.config import Config, KafkaConfig, MetaConfig, RedisConfig
        from gateway.events import KafkaSink
        from gateway.meta.factory import make_store

        built = {}
        for name, build in (
            ("aiobotocore", lambda: S3BlobBackend(S3Settings(bucket="b"), Path(sys.argv[1]))),
            ("redis", lambda: RedisCache(RedisConfig(url="redis://127.0.0.1:1/0"))),
            ("asyncpg", lambda: make_store(Config(meta=MetaConfig(dsns=("postgresql://127.0.0.1:1/x",))))),
            ("aiokafka", lambda: KafkaSink(KafkaConfig(bootstrap="127.0.0.1:1"))),
        ):
            before = name in sys.modules
            build()
            built[name] = [before, name in sys.modules]
        print(json.dumps(built))
        """
    )
    built = _run(script, str(tmp_path))
    assert built == {name: [False, True] for name in DRIVERS}
