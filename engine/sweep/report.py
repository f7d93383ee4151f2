"""Sweep exports: the paper-style table per group (arXiv 2604.02881's layout) and every grid point."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from engine.sweep.run import SweepResult, dev_summary
from engine.translate.report import COLUMNS, long_rows, to_markdown


def _cell(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def table_csv(result: SweepResult) -> str:
    """Long form: group, system, direction, scores, rates, signatures (devtest)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=("group", *COLUMNS), lineterminator="\n")
    writer.writeheader()
    for group, rows in result.tables.items():
        for row in long_rows(rows):
            writer.writerow({"group": group, **{k: _cell(v) for k, v in row.items()}})
    return out.getvalue()


def table_markdown(result: SweepResult) -> str:
    metric = result.config.metric
    parts = [
        to_markdown(rows, title=f"{group} (devtest; merges chosen on dev by average {metric})")
        for group, rows in result.tables.items()
    ]
    shared = [p for p in result.points if p.same_as]
    if shared:
        parts.append(
            f"{len(result.points)} grid points, {len(result.points) - len(shared)} distinct merges: "
            f"{len(shared)} point(s) merge to the same model as an earlier point of their group (normalize on "
            "and equal weights, so the weight cancels) and share its merge and scores; points.csv, same_model_as.\n"
        )
    if result.failed:
        failures = "; ".join(f"{p.group} {p.point.label}: {p.error}" for p in result.failed)
        parts.append(f"Failed points: {failures}\n")
    if result.errors:
        parts.append(f"Rows left out (failed): {'; '.join(result.errors)}\n")
    if result.stopped:
        parts.append("Sweep stopped before the end; run it again to resume from the cache.\n")
    return "\n".join(parts)


def points_csv(result: SweepResult) -> str:
    rows = dev_summary(result.points, result.config.metric)
    out = io.StringIO()
    fields = [
        "group",
        "method",
        "setting",
        "status",
        "dev_bleu",
        "dev_chrf",
        "dev_chrfpp",
        "dev_off_target",
        "dev_off_target_ref",
        "identity",
        "same_model_as",
        "error",
    ]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def write_sweep(result: SweepResult, folder: str | Path) -> list[Path]:
    """table.csv, table.md and points.csv into `folder`; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"points.csv": points_csv(result)}
    if result.tables:
        files["table.csv"] = table_csv(result)
    if result.tables:
        files["table.md"] = table_markdown(result)
    elif result.stopped:
        files["table.md"] = "Sweep stopped before the table; run it again to resume from the cache.\n"
    written = []
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        written.append(folder / name)
    return written
