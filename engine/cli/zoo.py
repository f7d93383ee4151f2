"""`python -m engine zoo build|verify|table`: rebuild the demo zoo, check it against its manifest, or
build its merge table (engine.sweep over the zoo, kept by engine.zoo.merge_table)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from engine.settings import ZOO_DIR

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("build", "verify", "table"),
        help="build the zoo, check its files against the manifest, or build the merge table",
    )
    parser.add_argument("--out", type=Path, default=ZOO_DIR, help=f"zoo folder (default {ZOO_DIR})")
    parser.add_argument(
        "--preset",
        choices=("full", "micro"),
        default="full",
        help="full: the committed zoo (~30 min on 2 cores); micro: seconds, for tests",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="table: score every merge again instead of reading the cache"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the models an interrupted build of the same settings finished"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="fine-tune this many models at once, one process each (same results)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per fine-tune (default: the preset's); the base, trained alone "
        "first, gets workers × threads",
    )


def run(args: argparse.Namespace) -> int:
    from engine.zoo.manifest import verify_zoo

    if args.action == "verify":
        problems = verify_zoo(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        print("zoo matches its manifest" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.action == "table":
        from engine.zoo.merge_table import run_table, table_payload, to_markdown, write_table

        payload = table_payload(run_table(args.out, use_cache=not args.no_cache))
        for path in write_table(args.out, payload):
            log.info("wrote %s", path)
        print(to_markdown(payload))
        return 0
    from engine.zoo.build import PRESETS, build

    command = "python -m engine.zoo build" + (f" --preset {args.preset}" if args.preset != "full" else "")
    # --out is left out of the recorded command: where the zoo is written does not change it.
    config = PRESETS[args.preset]
    if args.threads:
        config = dataclasses.replace(config, torch_threads=args.threads)
        command += f" --threads {args.threads}"
    manifest = build(args.out, config, command=command, resume=args.resume, workers=args.workers)
    summary = {
        name: {d: s["chrf"] for d, s in m["devtest"].items()}
        if name != "base" and name != "joint"
        else round(sum(s["chrf"] for s in m["devtest"].values()) / len(m["devtest"]), 2)
        for name, m in manifest["models"].items()
    }
    print(json.dumps({"timings_s": manifest["timings_s"], "devtest_chrf": summary}, indent=1))
    return 0
