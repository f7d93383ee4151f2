"""The patching experiment's table as Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from engine.errors import DataError
from engine.patch.experiment import gap_closed

COLUMNS = ("base", "merge", "patched", "control", "expert")


def _cell(row: dict, col: str) -> str:
    if col == "control":
        mean = row["control_mean_chrf"]
        if mean is None:
            return "–"
        return (
            f"{mean:.1f} ± {row['control_spread_chrf']:.1f} / {row['control_mean_bleu']:.1f} ± "
            f"{row['control_spread_bleu']:.1f} / {100 * row['control_mean_off_target']:.0f}"
        )
    return f"{row[f'{col}_chrf']:.1f} / {row[f'{col}_bleu']:.1f} / {100 * row[f'{col}_off_target']:.0f}"


def to_markdown(table: list[dict], controls_from: str) -> str:
    """One table per routed layer set; cells chrF / BLEU / off-target %, controls as mean ± spread."""
    if not table:
        raise DataError("no patching results to tabulate")
    drawn = "outside the routed blocks" if controls_from == "rest" else "from every block"
    out = []
    for layers in dict.fromkeys(r["layers"] for r in table):
        rows = [r for r in table if r["layers"] == layers]
        out.append(
            f"### patched: {layers} (each direction from its own expert); random controls: "
            f"{rows[0]['controls']} seed(s), same number of blocks, drawn {drawn}\n"
        )
        out.append("| direction | base | merge | patched | random (mean ± sd) | expert | gap closed (chrF) |")
        out.append("|---|---|---|---|---|---|---|")
        for r in rows:
            share = gap_closed(r)
            closed = f"{100 * share:.0f} %" if share is not None else "–"
            out.append(f"| {r['direction']} | " + " | ".join(_cell(r, c) for c in COLUMNS) + f" | {closed} |")
        out.append("")
    return "Cells: chrF / BLEU / off-target %.\n\n" + "\n".join(out)


def write_report(experiment, path: str | Path) -> Path:
    """Write a PatchExperiment by extension: .md (the tables), .csv (the summary table) or .json
    (the summary table and every score, each control with its seed and blocks)."""
    path = Path(path)
    table = experiment.table()
    if path.suffix == ".md":
        text = to_markdown(table, experiment.controls_from)
    elif path.suffix == ".json":
        text = json.dumps({"table": table, "scores": [asdict(s) for s in experiment.scores]}, indent=1)
    elif path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
        text = buffer.getvalue()
    else:
        raise DataError(f"{path}: output must end in .md, .csv or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
