"""`python -m engine cache ls | verify | gc`: inspect and maintain the cache folder from the settings."""

from __future__ import annotations

import argparse
import sys
import time

from engine.settings import cache_store


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("ls", help="list entries, most recently used first")
    verify = sub.add_parser("verify", help="check every entry's checksum and delete the bad ones")
    verify.add_argument("--keep", action="store_true", help="report bad entries without deleting them")
    gc = sub.add_parser("gc", help="evict over the cap; remove orphan files, stale temporaries, idle locks")
    gc.add_argument("--max-gb", type=float, default=None, help="evict down to this size instead of the configured cap")


def run(args: argparse.Namespace) -> int:
    try:
        store = cache_store()
    except (ValueError, OSError) as err:  # a malformed setting or an unwritable cache folder
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.action == "ls":
        entries = store.entries()
        for e in entries:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
            print(f"{e.key[:16]}  {e.kind:<12} {_size(e.size):>9}  {used}  {e.description}")
        print(f"{len(entries)} entries, {_size(store.total_bytes())} of {_size(store.max_bytes)} in {store.root}")
        return 0
    if args.action == "verify":
        bad = store.verify(delete=not args.keep)
        for key in bad:
            print(f"bad: {key}" + ("" if args.keep else " (deleted)"))
        print(f"{len(bad)} bad entries")
        return 1 if bad and args.keep else 0
    max_bytes = None if args.max_gb is None else int(args.max_gb * 1024**3)
    report = store.gc(max_bytes=max_bytes)
    print(", ".join(f"{k}: {v}" for k, v in report.items()))
    return 0
