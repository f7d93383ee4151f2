"""The paper-style results table (arXiv 2604.02881, Tables: base, experts, joint, merges), exported.

Long form (one row per system and direction, plus an 'avg' row per system) goes to CSV and
JSON; the Markdown table is wide, one row per system, with "BLEU / chrF / off-target %" cells,
followed by the sacreBLEU signatures (Post, WMT 2018) that produced the numbers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from engine.errors import DataError
from engine.translate.evaluate import AVERAGE, METRICS, EvaluationResult

COLUMNS = (
    "system",
    "direction",
    "n",
    *METRICS,
    "identity",
    "bleu_signature",
    "chrf_signature",
    "chrfpp_signature",
    "decoding_signature",
)


def long_rows(results: Sequence[EvaluationResult]) -> list[dict]:
    """One dict per (system, direction) and per system average; scores in sacreBLEU's 0-100, rates in 0-1."""
    rows = []
    for r in results:
        for d in r.directions:
            rows.append(
                {
                    "system": r.system,
                    "direction": d.direction,
                    "n": len(d.samples),
                    **{m: d.metric(m) for m in METRICS},
                    "identity": r.identity,
                    "bleu_signature": d.scores.bleu_signature,
                    "chrf_signature": d.scores.chrf_signature,
                    "chrfpp_signature": d.scores.chrfpp_signature,
                    "decoding_signature": d.decoding,
                }
            )
        signatures = {
            k: " ; ".join(sorted({getattr(d.scores, k) for d in r.directions}))
            for k in ("bleu_signature", "chrf_signature", "chrfpp_signature")
        }
        signatures["decoding_signature"] = " ; ".join(sorted({d.decoding for d in r.directions}))
        rows.append(
            {
                "system": r.system,
                "direction": AVERAGE,
                "n": sum(len(d.samples) for d in r.directions),
                **r.average(),
                "identity": r.identity,
                **signatures,
            }
        )
    return rows


def to_csv(results: Sequence[EvaluationResult]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in long_rows(results):
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def to_json(results: Sequence[EvaluationResult], samples: bool = True) -> str:
    payload = [r.to_dict() for r in results]
    if not samples:
        for r in payload:
            for d in r["directions"]:
                d.pop("samples")
    return json.dumps(payload, ensure_ascii=False, indent=1)


def to_markdown(results: Sequence[EvaluationResult], title: str = "") -> str:
    """Systems × directions; each cell 'BLEU / chrF / off-target %' (off-target vs requested target)."""
    if not results:
        raise DataError("no results to tabulate")
    directions = list(dict.fromkeys(d.direction for r in results for d in r.directions))
    lines = [f"### {title}", ""] if title else []
    lines.append("| system | " + " | ".join(directions) + " | avg | avg off-target vs reference |")
    lines.append("|---" * (len(directions) + 3) + "|")
    for r in results:
        cells = []
        for direction in directions + [AVERAGE]:
            try:
                cells.append(
                    f"{r.metric('bleu', direction):.1f} / {r.metric('chrf', direction):.1f} / "
                    f"{100 * r.metric('off_target', direction):.0f}%"
                )
            except KeyError:
                cells.append("–")
        cells.append(f"{100 * r.metric('off_target_ref'):.0f}%")
        lines.append(f"| {r.system} | " + " | ".join(cells) + " |")
    noise = _percent_mean([r.metric("reference_miss") for r in results])
    signatures = sorted({d.scores.bleu_signature for r in results for d in r.directions})
    chrf = sorted({d.scores.chrf_signature for r in results for d in r.directions})
    decoding = sorted({d.decoding for r in results for d in r.directions if d.decoding})
    lines += [
        "",
        "Cells: BLEU / chrF / off-target % (output's detected language ≠ requested target; py3langid "
        "restricted to the languages in play).",
        "Off-target vs reference: output's detected language ≠ the language detected on its reference "
        f"(cancels the identifier's errors on short phrases). References not detected as their target: {noise}.",
        "BLEU: " + " ; ".join(signatures),
        "chrF: " + " ; ".join(chrf),
    ]
    if decoding:
        lines.append("Decoding: " + " ; ".join(decoding))
    return "\n".join(lines) + "\n"


def _percent_mean(values: Sequence[float]) -> str:
    return f"{100 * sum(values) / len(values):.0f}%" if values else "–"


def write_results(results: Sequence[EvaluationResult], path: str | Path, title: str = "") -> Path:
    """Write by extension: .csv, .md or .json."""
    path = Path(path)
    writers = {".csv": to_csv, ".md": lambda r: to_markdown(r, title), ".json": to_json}
    if path.suffix not in writers:
        raise DataError(f"{path}: output must end in .csv, .md or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(writers[path.suffix](results), encoding="utf-8")
    return path
