"""`python -m engine <command>`: one CLI over the engine's plain functions.

Each command lives in engine/cli/<name>.py with `add_arguments(parser)` and `run(args) -> int`,
imported only when used so one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine.errors import MergeScopeError

COMMANDS = {
    "checkpoints": "list discovered checkpoints with their summaries",
    "merge": "merge checkpoints from a mergekit YAML recipe",
    "analyze": "capture activations and compute CKA / neuron selectivity",
    "evaluate": "translate and score models on parallel data",
    "sweep": "grid-search merge hyperparameters and build the paper-style table",
    "zoo": "build or check the demo zoo",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen command's module is imported; the others just need a name and help line.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"engine.cli.{name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except MergeScopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
