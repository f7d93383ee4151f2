"""`python -m engine <command>`: one CLI over the engine's plain functions.

Each command lives in engine/cli/<name>.py with `add_arguments(parser)` and `run(args) -> int`,
imported only when used so one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from engine.errors import MergeScopeError

COMMANDS = {
    "checkpoints": "list discovered checkpoints with their summaries",
    "merge": "merge checkpoints from a mergekit YAML recipe",
    "analyze": "capture activations and compute CKA / neuron selectivity",
    "evaluate": "translate and score models on parallel data",
    "patch": "layer patching routed by target language, with random-block controls",
    "schedule": "depth-scheduled recipes (LiNeS, layer swapping) as mergekit YAML",
    "sweep": "grid-search merge hyperparameters and build the paper-style table",
    "zoo": "build or check the demo zoo",
    "cache": "list, verify or clean the content-addressed cache",
}


def named_paths(argv: list[str]) -> list[Path]:
    """Existing paths on the command line, and the folders named in the YAML files among them
    (recipes, grids): what the person at the terminal chose, so model roots do not apply to them."""
    import yaml

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    named = []
    for token in argv:
        path = Path(token.split("=", 1)[-1]).expanduser()
        if not path.exists():
            continue
        named.append(path)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # the command itself reports an unreadable file
            named += [Path(s).expanduser() for s in strings(data) if s and Path(s).expanduser().is_dir()]
    return named


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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from engine.checkpoints.paths import trusting

    try:
        with trusting(named_paths(argv)):
            return args.run(args)
    except MergeScopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
