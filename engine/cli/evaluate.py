"""`python -m engine evaluate`: translate parallel data with checkpoints and score them.

    python -m engine evaluate --model zoo/models/base --model zoo/models/en-es \
        --data zoo/data/devtest --out results.md --out results.csv

Every input is checked (data files, languages, checkpoint folders under the model roots, chat
templates) before the first model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import DataError
from engine.parallel import ParallelSet, load_jsonl
from engine.translate.generate import PAPER_MAX_NEW_TOKENS, POSTPROCESSING

log = logging.getLogger(__name__)


def load_data(paths: list[str], limit: int | None = None) -> list[ParallelSet]:
    """JSONL files, or folders whose *.jsonl files are each one direction; `limit` pairs per set."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: folder holds no .jsonl parallel files")
            files += found
        else:
            files.append(p)
    sets = [load_jsonl(f) for f in files]
    return [s.head(limit) for s in sets] if limit else sets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH",
        help="checkpoint folder under the model roots (repeat for several)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="JSONL parallel files or folders of them (one direction per file)",
    )
    parser.add_argument(
        "--out",
        action="append",
        default=[],
        metavar="FILE",
        help="write results to .csv, .md or .json (repeatable); Markdown to stdout otherwise",
    )
    parser.add_argument(
        "--languages", help="comma-separated languages language ID may answer (default: every language of the data)"
    )
    parser.add_argument("--limit", type=int, help="first N pairs of each file only")
    parser.add_argument(
        "--max-new-tokens", type=int, default=PAPER_MAX_NEW_TOKENS, help="cap on generated tokens (the paper's: 512)"
    )
    parser.add_argument(
        "--postprocess",
        choices=sorted(POSTPROCESSING),
        default="paper",
        help="paper: cut at U+FFFD, first line, stripped of whitespace and quotes (merging/eval_en_indic.py); "
        "first-line: the first non-blank line; none: the whole output",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", help="auto, cpu or cuda (default: MERGESCOPE_DEVICE)")
    parser.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")


def run(args: argparse.Namespace) -> int:
    from engine.checkpoints import load_model, load_tokenizer, open_checkpoint
    from engine.translate.evaluate import evaluate, validate_sets
    from engine.translate.generate import DecodingSettings, LazyModelTranslator, prompt_signature
    from engine.translate.report import to_markdown, write_results

    for out in args.out:
        if Path(out).suffix not in (".csv", ".md", ".json"):
            raise DataError(f"{out}: output must end in .csv, .md or .json")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be a positive number of pairs, got {args.limit}")
    settings = DecodingSettings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, postprocess=args.postprocess
    )
    sets = load_data(args.data, args.limit)
    languages = validate_sets(sets, args.languages.split(",") if args.languages else None)
    checkpoints = [open_checkpoint(m) for m in args.model]
    prompts = {}
    for ckpt in checkpoints:
        tokenizer = load_tokenizer(ckpt)
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{ckpt.path}: tokenizer has no chat template; the paper's prompt needs one")
        prompts[ckpt.path] = prompt_signature(tokenizer)

    results = []
    progress = lambda done, total, msg: log.info("[%d/%d] %s", done, total, msg)  # noqa: E731
    for ckpt in checkpoints:
        # Loaded only if some direction is not cached yet.
        translator = LazyModelTranslator(
            ckpt.fingerprint, lambda c=ckpt: load_model(c, device=args.device), prompts[ckpt.path], settings
        )
        results.append(
            evaluate(
                translator, sets, system=ckpt.name, languages=languages, use_cache=not args.no_cache, progress=progress
            )
        )
        translator.release()

    for out in args.out:
        log.info("wrote %s", write_results(results, out))
    if not args.out:
        sys.stdout.write(to_markdown(results))
    return 0
