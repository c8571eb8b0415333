"""``strata stats``: objects, logical/unique/stored/physical bytes (packs and inline objects
apart), dedup and compression ratios, and bytes by tier, as a table for people or JSON
(``--json``) for machines.

Reads one aggregate snapshot from the metadata store (see :mod:`gateway.maintenance.stats`
for the definitions); safe next to a live gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.commands.fsck import missing_store
from gateway.commands.progress import human_bytes
from gateway.config import Config
from gateway.maintenance.stats import collect
from gateway.runtime import admin_stores


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "stats",
        help="storage statistics: objects, bytes, dedup and compression ratios, bytes by tier",
        description=(
            "Print what the store holds: objects and versions, logical bytes (what clients "
            "would download), unique chunk bytes, stored and physical bytes (in packs, and of tiny "
            "objects kept inline in the metadata store), the dedup ratio (logical / unique) and "
            "compression ratio (unique / stored), and bytes by tier."
        ),
    )
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (bytes as integers)")
    p.set_defaults(run=run)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _bytes(n: int) -> str:
    return f"{human_bytes(n)} ({n:,} bytes)"


def table(s: dict[str, Any]) -> str:
    """A plain two-column table of :func:`gateway.maintenance.stats.summarize`'s numbers."""
    inline = f"{_bytes(s['inline_bytes'])} in {s['inline_versions']:,} manifests, in the metadata store"
    rows = [
        ("objects (current)", f"{s['objects']:,}"),
        ("versions (all)", f"{s['versions']:,}"),
        ("delete markers", f"{s['delete_markers']:,}"),
        ("unfinished multipart parts", f"{s['multipart_parts']:,}"),
        ("logical bytes", _bytes(s["logical_bytes"])),
        ("unique chunks", f"{s['unique_chunks']:,}"),
        ("unique bytes", _bytes(s["unique_bytes"])),
        ("stored bytes", _bytes(s["stored_bytes"])),
        ("physical bytes", f"{_bytes(s['physical_bytes'])}: pack bytes + inline bytes"),
        ("pack bytes", f"{_bytes(s['pack_bytes'])} in {s['packs']:,} packs"),
        ("inline bytes", inline),
        ("dedup ratio", _ratio(s["dedup_ratio"])),
        ("compression ratio", _ratio(s["compression_ratio"])),
    ]
    rows += [(f"tier {tier}", _bytes(n)) for tier, n in s["bytes_by_tier"].items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


async def _collect(config: Config) -> dict[str, Any]:
    async with admin_stores(config) as s:
        return await collect(s.meta)


def run(args: argparse.Namespace, config: Config) -> int:
    problem = missing_store(config)
    if problem is not None:
        print(f"strata stats: {problem}", file=sys.stderr)
        return 2
    summary = asyncio.run(_collect(config))
    print(json.dumps(summary, indent=2) if args.json else table(summary))
    return 0
