"""`python -m engine checkpoints`: the checkpoints discovered under the model roots."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from engine.checkpoints import discover_checkpoints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fingerprint", action="store_true", help="also compute content fingerprints (reads every tensor once)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    found = discover_checkpoints()
    rows = []
    for ckpt in found.checkpoints:
        row = asdict(ckpt.summary)
        if args.fingerprint:
            row["fingerprint"] = ckpt.fingerprint
        rows.append(row)
    if args.json:
        print(
            json.dumps({"checkpoints": rows, "refused": [{"path": p, "reason": r} for p, r in found.refused]}, indent=2)
        )
        return 0
    for row in rows:
        print(
            f"{row['name']:<24} {row['architecture']:<20} {row['layers']:>3} layers  d={row['hidden_size']:<5} "
            f"vocab={row['vocab_size']:<7} {row['parameters'] / 1e6:8.2f} M params  {row['dtype']:<5} "
            f"{row['size_bytes'] / 2**20:8.1f} MiB" + (f"  {row['fingerprint'][:16]}" if args.fingerprint else "")
        )
    for path, reason in found.refused:
        print(f"refused: {path}: {reason}")
    return 0
