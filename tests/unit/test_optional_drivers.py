"""The embedded default loads no driver it does not use.

aiobotocore (S3 backend, KMS), redis (shared cache) and asyncpg (sharded PostgreSQL) are
imported by the component that needs them, when the config asks for it. Together they are
~28 MiB of a serving process's RSS, measured against ~86 MiB idle; memory per upload is
bounded against the total (bench/README.md run K). The test runs `strata serve`'s start-up
path (the command-line parser with every command registered, the runtime, the app) in a fresh
interpreter and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _modules_after(script: str, *args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_embedded_default_starts_without_optional_drivers(tmp_path: Path) -> None:
    loaded = _modules_after(_SERVE_PATH, str(tmp_path))
    assert "aiohttp" in loaded and "gateway" in loaded  # the script did run the serve path
    assert loaded.isdisjoint(DRIVERS), sorted(loaded.intersection(DRIVERS))


def test_each_driver_loads_where_its_component_is_built() -> None:
    """The imports moved, they did not vanish: building each component loads its driver."""
    script = textwrap.dedent(
        """
        import json, sys
        from gateway.backends.s3 import S3Settings, client_config
        from gateway.cache import RedisCache
        from gateway.config import MetaConfig, RedisConfig
        from gateway.meta.factory import make_store
        from gateway.config import Config

        client_config(S3Settings(bucket="b"))
        RedisCache(RedisConfig(url="redis://127.0.0.1:1/0"))  # no connection until first use
        make_store(Config(meta=MetaConfig(dsns=("postgresql://127.0.0.1:1/x",))))
        print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
        """
    )
    loaded = _modules_after(script)
    assert {"aiobotocore", "redis", "asyncpg"} <= loaded
