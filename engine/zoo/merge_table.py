"""The zoo README's paper-style table, from engine.sweep's run over the zoo (`python -m engine.zoo table`).

engine.sweep does the work (its zoo_grid: the En→X and X→En experts merged on the base with
equal weights, the small grid, the best point per method by average dev BLEU, rescored on
devtest next to the base, the experts and the joint model); this module only keeps the result:
zoo/merge_table.json, and the table between the markers in zoo/README.md.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from engine.errors import DataError
from engine.settings import REPO_ROOT

log = logging.getLogger(__name__)
TABLE_NAME = "merge_table.json"
README_MARKERS = ("<!-- merge-table: written by `python -m engine.zoo table` -->", "<!-- /merge-table -->")
SCORES = ("bleu", "chrf", "off_target", "off_target_ref")
GROUP_TITLES = {"en-x": "En→X", "x-en": "X→En"}


def run_table(zoo_dir: Path, device: str = "cpu", use_cache: bool = True):
    """engine.sweep's run over the zoo's small grid; DataError if any point or row failed."""
    from engine.sweep import from_dict, run_sweep, zoo_grid

    # The table names the zoo by its path in the repository, so it reads the same from any checkout.
    shown = Path(zoo_dir).resolve()
    shown = shown.relative_to(REPO_ROOT) if shown.is_relative_to(REPO_ROOT) else shown
    config = from_dict(zoo_grid(zoo_dir), Path(zoo_dir), source=f"demo zoo {shown} (small grid)")
    result = run_sweep(config, device=device, use_cache=use_cache)
    problems = [f"{p.group} {p.point.label}: {p.error}" for p in result.failed] + result.errors
    if problems or result.stopped:
        raise DataError(f"{zoo_dir}: the zoo sweep did not finish cleanly; no table written: {'; '.join(problems)}")
    return result


def _scores(evaluation) -> dict:
    return {d.direction: {k: round(d.metric(k), 4 if k.startswith("off") else 2) for k in SCORES}
            for d in evaluation.directions}


def table_payload(result) -> dict:
    """What merge_table.json holds: how the sweep ran, and every table row with its devtest scores.

    Rows per group: base, joint, experts (each on its own direction), then the best point of each
    method with its setting and its average dev score, the one it was chosen by.
    """
    config = result.config
    chosen = {best.identity: (method, best) for (_, method), (best, _) in result.best.items()}
    rows = []
    for group, evaluations in result.tables.items():
        for evaluation in evaluations:
            row = {"group": group, "system": evaluation.system, "setting": {}, "scores": _scores(evaluation)}
            if evaluation.identity in chosen:
                method, best = chosen[evaluation.identity]
                row.update(system=method, setting=dict(best.point.params),
                           dev=round(best.score(config.metric), 2), recipe_hash=best.identity)
            elif evaluation.identity == "experts":
                row["system"] = "experts"
            rows.append(row)
    order = {"base": 0, "joint": 1, "experts": 2}
    rows.sort(key=lambda r: (r["group"], order.get(r["system"], 3)))  # stable: merges keep the grid's order
    return {
        "sweep": {"source": config.source, "metric": config.metric,
                  "dev_pairs_per_direction": len(next(iter(config.dev.values()))),
                  "decoding": {"max_new_tokens": config.decoding.max_new_tokens,
                               "batch_size": config.decoding.batch_size,
                               "postprocess": config.decoding.postprocess},
                  "each_expert": config.each_expert,
                  "distinct_merges": sum(not p.same_as for p in result.points),
                  "languages": list(config.languages),
                  "grids": {m: [dict(p.params) for p in points] for m, points in config.grids.items()}},
        "rows": rows,
    }


def to_markdown(payload: dict) -> str:
    """One table per group: a column per direction (chrF / BLEU / off-target %) and the average."""
    out = []
    for group, title in GROUP_TITLES.items():
        rows = [r for r in payload["rows"] if r["group"] == group]
        if not rows:
            continue
        directions = sorted(rows[0]["scores"])
        out.append(f"### {title} (devtest; each cell chrF / BLEU / off-target %)")
        out.append("| system | setting (chosen on dev) | " + " | ".join(directions) + " | average |")
        out.append("|---|---|" + "---|" * (len(directions) + 1))
        for r in rows:
            scores = r["scores"]
            cells = [f"{scores[d]['chrf']:.1f} / {scores[d]['bleu']:.1f} / {100 * scores[d]['off_target']:.0f}"
                     for d in directions]
            mean = {k: sum(scores[d][k] for d in directions) / len(directions) for k in ("chrf", "bleu", "off_target")}
            setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "–"
            out.append(f"| {r['system']} | {setting} | " + " | ".join(cells)
                       + f" | **{mean['chrf']:.1f}** / {mean['bleu']:.1f} / {100 * mean['off_target']:.0f} |")
    return "\n".join(out) + "\n"


def write_table(zoo_dir: Path, payload: dict) -> list[Path]:
    """zoo/merge_table.json, and the table in zoo/README.md between its markers (when there is a README)."""
    zoo_dir = Path(zoo_dir)
    readme = zoo_dir / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    block = re.compile(f"{re.escape(README_MARKERS[0])}\n.*?{re.escape(README_MARKERS[1])}", re.S)
    if text is not None and not block.search(text):
        raise DataError(f"{readme}: no merge-table markers ({README_MARKERS[0]} … {README_MARKERS[1]})")
    path = zoo_dir / TABLE_NAME
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if text is None:
        return [path]
    table = f"{README_MARKERS[0]}\n{to_markdown(payload)}{README_MARKERS[1]}"
    readme.write_text(block.sub(lambda _: table, text), encoding="utf-8")
    return [path, readme]
