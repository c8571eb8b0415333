"""The ``strata`` command line: ``serve`` (and, later, admin, gc, fsck, keys, stats, bench).

Every command takes ``--config`` and ``--data-dir`` and builds the one typed config object
from them, the TOML file and the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import ssl
import sys
from pathlib import Path

from aiohttp import web

from gateway.config import Config, load_config, with_overrides
from gateway.maintenance.lease import LeaseBusy
from gateway.memory import freeze_startup_heap, tune_malloc

# Operator commands that live in their own modules (gateway/commands/*.py). Each module
# provides ``register(subparsers, common)`` to add its parser (setting ``run`` as the parser
# default: ``run(args, config) -> exit status``).
COMMAND_MODULES: tuple[str, ...] = (
    "gateway.commands.fsck",
    "gateway.commands.stats",
    "gateway.commands.db",
    "gateway.commands.gc",
    "gateway.commands.keys",
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (environment variables override it)")
    p.add_argument("--data-dir", help="data directory for the embedded default (default ./strata-data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strata",
        description="Strata: an S3-compatible storage gateway with dedup, compression and encryption.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "bench", help="benchmarks: run, ceiling, dedup, noop, small, suite, guard (bench/README.md)",
        add_help=False,
    )  # fmt: skip
    serve = sub.add_parser(
        "serve",
        help="run the S3 gateway",
        description="Run the S3 gateway. With no config it listens on 127.0.0.1:9000 and keeps "
        "everything (SQLite metadata, packs, keyring) in ./strata-data. Root credentials come from "
        "STRATA_ROOT_ACCESS_KEY / STRATA_ROOT_SECRET_KEY, or are generated and printed once on first start.",
    )
    _common(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 9000)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert")
    serve.add_argument("--log-level", help="logging level (default: log.level from the config, INFO)")

    admin = sub.add_parser("admin", help="manage users and access keys", description="Manage users and keys.")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    user = admin_sub.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    user_add = user.add_parser(
        "add", help="create a user and print its first access key (secret shown once)", description=(
            "Create a user with its own buckets and dedup key, and print an access key pair. "
            "Buckets belong to their creator; other users get AccessDenied."
        ),
    )  # fmt: skip
    user_add.add_argument("name")
    _common(user_add)
    key = admin_sub.add_parser("key", help="access keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="add an access key to a user and print it (secret shown once)")
    key_create.add_argument("name")
    _common(key_create)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, _common)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    return with_overrides(
        config,
        server={
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "tls_cert": getattr(args, "tls_cert", None),
            "tls_key": getattr(args, "tls_key", None),
        },
        storage={"data_dir": args.data_dir},
        log={"level": getattr(args, "log_level", None)},
    )


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    cert, key = config.server.tls_cert, config.server.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise SystemExit("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _serve(config: Config) -> None:
    from gateway.app import build_app
    from gateway.observability.logging import configure_logging
    from gateway.runtime import Runtime

    try:
        configure_logging(config.log)  # JSON (or text) lines, secrets redacted
    except ValueError as exc:
        raise SystemExit(f"strata: configuration error: {exc}") from None
    rt = await Runtime.open(config)
    generated = await rt.identities.bootstrap_root(config.root)
    if generated is not None:
        print(
            "Generated root credentials (shown once; store them now):\n"
            f"  access key: {generated[0]}\n  secret key: {generated[1]}",
            flush=True,
        )
    app = build_app(rt)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    frozen = freeze_startup_heap()  # everything alive now lives as long as the server
    logging.getLogger("strata").debug("froze %d startup objects out of the collector's scans", frozen)
    tls = _ssl_context(config)
    site = web.TCPSite(runner, config.server.host, config.server.port, ssl_context=tls)
    await site.start()
    scheme = "https" if tls else "http"
    logging.getLogger("strata").info(
        "Strata listening on %s://%s:%d (data dir %s)",
        scheme,
        config.server.host,
        config.server.port,
        config.storage.data_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own command line (bench/cli.py)
        from bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(getattr(args, "log_level", None) or "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"strata: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        tune_malloc()
        try:
            import uvloop

            uvloop.run(_serve(config))
        except ImportError:  # pragma: no cover - uvloop is a dependency
            asyncio.run(_serve(config))
        return 0
    if args.command == "admin":
        return _admin(args, config)
    run = getattr(args, "run", None)
    if run is not None:
        try:
            return int(run(args, config))
        except KeyboardInterrupt:
            print("strata: interrupted; the job can be resumed by running it again", file=sys.stderr)
            return 130
        except LeaseBusy as exc:
            print(f"strata: {exc}", file=sys.stderr)
            return 2
    return 2


def _admin(args: argparse.Namespace, config: Config) -> int:
    from gateway import admin

    try:
        if args.admin_command == "user":
            ak, sk = asyncio.run(admin.add_user(config, args.name))
        else:
            ak, sk = asyncio.run(admin.create_key(config, args.name))
    except admin.AdminError as exc:
        print(f"strata: {exc}", file=sys.stderr)
        return 1
    print(f"user:       {args.name}\naccess key: {ak}\nsecret key: {sk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
