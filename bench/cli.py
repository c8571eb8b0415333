"""The ``python -m bench`` command line (``strata bench`` will call :func:`main`).

This module owns argument parsing and printing only; every mode lives in its own module:
``run`` (:mod:`bench.load`), ``ceiling`` (:mod:`bench.ceiling`), ``dedup``
(:mod:`bench.dedup`), ``noop`` (:mod:`bench.noop`), ``small`` (:mod:`bench.small`),
``suite`` (:mod:`bench.suite`) and ``guard`` (:mod:`bench.guard`). Results go to stdout as
a table and, with ``--json``, to a file. Progress goes to stderr (``--quiet`` hides it).
Credentials default to ``STRATA_ROOT_ACCESS_KEY`` / ``STRATA_ROOT_SECRET_KEY`` (then
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.units import format_size, parse_size

MB_NOTE = "MB = 10^6 bytes"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _env(*names: str) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def _server_pid_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server-pid",
        type=int,
        help="PID of the endpoint's server on this machine: report its CPU per MB and per op",
    )


def _endpoint_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--endpoint",
        default=_env("STRATA_ENDPOINT") or ("http://127.0.0.1:9000" if required else ""),
        help="S3 endpoint URL, path-style (default $STRATA_ENDPOINT or http://127.0.0.1:9000)",
    )
    p.add_argument("--access-key", default=_env("STRATA_ROOT_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
    p.add_argument("--secret-key", default=_env("STRATA_ROOT_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"))
    p.add_argument("--region", default="us-east-1")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the result as JSON to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=f"Strata benchmarks ({MB_NOTE} in every MB/s figure)."
    )
    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")

    run = sub.add_parser("run", help="load an S3 endpoint (put|get|head|mixed|list|delete)")
    _endpoint_args(run)
    run.add_argument("--op", default="put", choices=("put", "get", "head", "mixed", "list", "delete"))
    run.add_argument("--size", type=_size, default=_size("64MiB"), help="object size, e.g. 4KiB, 64MiB, 1GiB")
    run.add_argument("--count", type=int, help="total operations (default: --duration 10 s)")
    run.add_argument("--duration", type=float, help="seconds to run instead of --count")
    run.add_argument("--concurrency", type=int, default=4, help="requests in flight, over all processes")
    run.add_argument("--data", default="random", choices=("random", "text", "versioned"))
    run.add_argument("--processes", type=int, default=0, help="client processes (default: one per core)")
    run.add_argument("--bucket", default="strata-bench", help="bucket (created if missing)")
    run.add_argument("--objects", type=int, help="pre-populated key set for get/head/mixed/list/delete")
    run.add_argument("--versions", type=int, default=8, help="corpus versions for --data versioned")
    run.add_argument("--cleanup", action="store_true", help="delete the objects the run created afterwards")
    run.add_argument("--prefix", default="", help="key prefix (default: a fresh one per run)")
    run.add_argument(
        "--reuse", action="store_true", help="get/head/list: the --objects keys already exist under --prefix"
    )
    run.add_argument("--label", default="", help="name of the run in tables and JSON")
    run.add_argument("--plot", metavar="PNG", help="write throughput-over-time + latency histogram to PNG")
    _server_pid_arg(run)
    _common(run)

    ceiling = sub.add_parser("ceiling", help="in-process codec ceiling (encode/decode MB/s), no HTTP")
    ceiling.add_argument("--data", default="random", choices=("random", "text"))
    ceiling.add_argument("--size", type=_size, default=_size("64MiB"))
    ceiling.add_argument("--total", type=_size, default=_size("1GiB"), help="bytes to encode and decode")
    ceiling.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="codec pool threads")
    ceiling.add_argument(
        "--streams", type=int, default=4, help="objects encoded at once (each with its MD5 thread)"
    )
    ceiling.add_argument(
        "--min-seconds", type=float, default=2.0, help="encode and decode each run at least this long"
    )
    _common(ceiling)

    dedup = sub.add_parser("dedup", help="upload a versioned corpus; physical vs unique compressed bytes")
    _endpoint_args(dedup)
    dedup.add_argument("--data-dir", required=True, help="the server's --data-dir (its blobs/ is measured)")
    dedup.add_argument("--versions", type=int, default=8)
    dedup.add_argument("--size", type=_size, default=_size("64MiB"), help="size of version 0")
    dedup.add_argument("--data", default="text", choices=("text", "random"), help="corpus kind")
    dedup.add_argument(
        "--edits", type=int, default=3, help="inserts, deletes and overwrites (each) per version"
    )
    dedup.add_argument("--seed", type=int, default=20261101)
    dedup.add_argument("--bucket", default="", help="bucket (default: a fresh one)")
    _common(dedup)

    noop = sub.add_parser("noop", help="run the no-op S3 server (the small-object baseline)")
    noop.add_argument("--host", default="127.0.0.1")
    noop.add_argument("--port", type=int, required=True)
    noop.add_argument("--size", type=_size, default=4096, help="GET size for keys never PUT")

    small = sub.add_parser(
        "small", help="small objects: the same load against a no-op server and the endpoint"
    )
    _endpoint_args(small)
    small.add_argument("--size", type=_size, default=4096)
    small.add_argument("--concurrency", type=int, default=32)
    small.add_argument("--duration", type=float, default=10.0, help="seconds per op per server per round")
    small.add_argument(
        "--rounds", type=int, default=1, help="alternate no-op/endpoint runs; best round counts"
    )
    small.add_argument("--objects", type=int, default=256, help="key set for get/head")
    small.add_argument("--ops", default="put,get", help="comma-separated: put,get,head,mixed")
    small.add_argument("--processes", type=int, default=0)
    small.add_argument("--bucket", default="strata-bench")
    small.add_argument("--noop-endpoint", default="", help="use this no-op server instead of starting one")
    _server_pid_arg(small)
    _common(small)

    for name, helptext in (
        ("suite", "the standard set (ceiling, 64 MiB PUT/GET, 4 KiB vs no-op, dedup) with ratios"),
        ("guard", "regression guard: the suite's ratios; exit 1 if one is worse than half its target"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--quick", action="store_true", help="a few seconds per part, random data only")
        p.add_argument("--endpoint", default="", help="measure this server instead of starting one")
        p.add_argument("--access-key", default=_env("STRATA_ROOT_ACCESS_KEY", "AWS_ACCESS_KEY_ID") or "")
        p.add_argument("--secret-key", default=_env("STRATA_ROOT_SECRET_KEY", "AWS_SECRET_ACCESS_KEY") or "")
        p.add_argument("--data-dir", default="", help="the external server's data dir (for dedup)")
        p.add_argument("--processes", type=int, default=0)
        if name == "suite":
            p.add_argument("--markdown", metavar="FILE", help="also write the results as Markdown tables")
        if name == "guard":
            p.add_argument(
                "--retries", type=int, default=2, help="re-measure a failing ratio up to this many times"
            )
        _common(p)
    return parser


def _need_keys(args: argparse.Namespace) -> None:
    if not args.access_key or not args.secret_key:
        raise SystemExit(
            "need --access-key and --secret-key (or STRATA_ROOT_ACCESS_KEY / STRATA_ROOT_SECRET_KEY)"
        )


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.load import LoadSpec, run_load
    from bench.report import plot_run, run_table, write_json

    _need_keys(args)
    spec = LoadSpec(
        endpoint=args.endpoint,
        access_key=args.access_key,
        secret_key=args.secret_key,
        op=args.op,
        size=args.size,
        data=args.data,
        concurrency=args.concurrency,
        count=args.count,
        duration=args.duration,
        processes=args.processes,
        bucket=args.bucket,
        objects=args.objects,
        versions=args.versions,
        region=args.region,
        cleanup=args.cleanup,
        progress=not args.quiet,
        label=args.label,
        prefix=args.prefix,
        prepopulated=args.reuse,
        server_pid=args.server_pid,
    )
    summary = run_load(spec)
    print(run_table([summary]))
    for sample in summary.error_samples:
        print(f"error: {sample}", file=sys.stderr)
    if args.json:
        write_json(args.json, summary.to_json())
    if args.plot:
        plot_run(summary, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 1 if summary.errors and not summary.total.count else 0


def _cmd_ceiling(args: argparse.Namespace) -> int:
    from bench.ceiling import CeilingSpec, run_ceiling
    from bench.report import table, write_json

    res = run_ceiling(
        CeilingSpec(
            data=args.data,
            size=args.size,
            total=args.total,
            threads=args.threads,
            streams=args.streams,
            min_seconds=args.min_seconds,
            progress=not args.quiet,
        )
    )
    print(
        table(
            ("ceiling", "size", "threads", "streams", "encode MB/s", "decode MB/s", "stored/plain"),
            [
                [
                    res["data"],
                    format_size(res["size"]),
                    res["threads"],
                    res["streams"],
                    res["encode_mb_per_s"],
                    res["decode_mb_per_s"],
                    res["stored_over_plain"],
                ]
            ],
        )
    )
    print(f"({MB_NOTE})")
    if args.json:
        write_json(args.json, res)
    return 0


def _cmd_dedup(args: argparse.Namespace) -> int:
    from bench.corpus import CorpusSpec
    from bench.dedup import DedupSpec, local_meter, run_dedup
    from bench.report import table, write_json

    _need_keys(args)
    corpus = CorpusSpec(
        versions=args.versions, size=args.size, kind=args.data, seed=args.seed, edits=args.edits
    )
    res = run_dedup(
        DedupSpec(
            args.endpoint,
            args.access_key,
            args.secret_key,
            corpus=corpus,
            bucket=args.bucket,
            region=args.region,
            progress=not args.quiet,
        ),
        local_meter(args.data_dir),
    )
    print(
        table(
            ("versions", "logical B", "physical B", "unique compressed B", "physical/unique", "dedup x"),
            [
                [
                    res["versions"],
                    res["logical_bytes"],
                    res["physical_bytes"],
                    res["unique_compressed_bytes"],
                    f"{res['physical_over_unique'] or 0:.4f}",
                    res["dedup_ratio"],
                ]
            ],
        )
    )
    if args.json:
        write_json(args.json, res)
    return 0


def _cmd_noop(args: argparse.Namespace) -> int:
    from bench.noop import serve

    print(f"no-op S3 server on http://{args.host}:{args.port}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port, args.size)
    return 0


def _cmd_small(args: argparse.Namespace) -> int:
    from bench.report import run_table, table, write_json
    from bench.small import SmallSpec, run_small

    _need_keys(args)
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    res = run_small(
        SmallSpec(
            endpoint=args.endpoint,
            access_key=args.access_key,
            secret_key=args.secret_key,
            size=args.size,
            concurrency=args.concurrency,
            duration=args.duration,
            rounds=args.rounds,
            objects=args.objects,
            ops=ops,
            processes=args.processes,
            bucket=args.bucket,
            noop_endpoint=args.noop_endpoint,
            server_pid=args.server_pid,
            progress=not args.quiet,
        )
    )
    print(run_table(res.summaries()))
    print()
    print(
        table(
            ("op", "endpoint op/s", "no-op op/s", "ratio"),
            [[op, res.target[op].total.ops_per_s, res.noop[op].total.ops_per_s, res.ratio(op)] for op in ops],
        )
    )
    if args.json:
        write_json(args.json, res.to_json())
    return 0


def _suite_spec(args: argparse.Namespace) -> Any:
    from bench.suite import SuiteSpec

    kw: dict[str, Any] = {
        "endpoint": args.endpoint,
        "access_key": args.access_key,
        "secret_key": args.secret_key,
        "data_dir": args.data_dir,
        "processes": args.processes,
        "progress": not args.quiet,
    }
    return SuiteSpec.quick_spec(**kw) if args.quick else SuiteSpec(**kw)


def _cmd_suite(args: argparse.Namespace) -> int:
    from bench.report import suite_markdown, write_json
    from bench.suite import Suite

    with Suite(_suite_spec(args)) as suite:
        result = suite.run_all()
    print(result.runs_table())
    print()
    print(result.ratio_table())
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, result.to_json())
    if args.markdown:
        Path(args.markdown).write_text(suite_markdown(result.to_json()))
    return 0


def _cmd_guard(args: argparse.Namespace) -> int:
    from bench.guard import run_guard

    return run_guard(_suite_spec(args), retries=args.retries, json_path=args.json)


COMMANDS = {
    "run": _cmd_run,
    "ceiling": _cmd_ceiling,
    "dedup": _cmd_dedup,
    "noop": _cmd_noop,
    "small": _cmd_small,
    "suite": _cmd_suite,
    "guard": _cmd_guard,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bench.client import S3RequestError
    from bench.load import LoadError
    from bench.server import ServerStartError

    try:
        return COMMANDS[args.mode](args)
    except (S3RequestError, LoadError, ServerStartError, OSError, ValueError) as e:
        print(f"bench {args.mode}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
