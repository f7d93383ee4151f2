"""The zoo README's paper-style table: base, experts, joint and merges of the En→X and X→En experts.

Protocol of Gain, Ekbal & Singh (arXiv 2604.02881), on a smaller grid: for each merge method
and each group of experts (all En→X, all X→En; equal weight, on the base), the setting with
the best average dev BLEU is chosen, then scored on devtest with BLEU, chrF and the off-target
rate. Merges go straight into a live model (engine.merge's streamed tensors) and are scored by
engine.translate, uncached; base, joint and expert rows are the build's devtest scores
from zoo/manifest.json (same decoding, same scorer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from engine.merge import merge_into_model
from engine.parallel import load_jsonl

log = logging.getLogger(__name__)

# name -> (method, global parameters, list of per-expert parameter settings)
# A coarse subset of the paper's grids (2 CPU cores). With normalize on and equal weights the
# weight cancels in TIES and DARE, so only density is searched there.
GRIDS = {
    "task_arithmetic": ("task_arithmetic", {}, [{"weight": w} for w in (0.1, 0.2, 0.3, 0.5)]),
    "ties": ("ties", {"normalize": True}, [{"density": d, "weight": 1.0} for d in (0.2, 0.5, 0.8)]),
    "dare_linear": ("dare_linear", {"normalize": True, "rescale": True},
                    [{"density": d, "weight": 1.0} for d in (0.2, 0.5, 0.8)]),
    "sce": ("sce", {}, [{"select_topk": k} for k in (0.2, 0.5, 0.8)]),
}


@dataclass(frozen=True)
class Row:
    system: str
    group: str  # "en-x" or "x-en"
    setting: dict
    scores: dict  # direction -> {"bleu", "chrf", "off_target", "off_target_ref"}


def _sets(zoo_dir: Path, split: str, directions: list[str], size: int | None):
    sets = [load_jsonl(zoo_dir / "data" / split / f"{d}.jsonl") for d in directions]
    return [s.head(size) if size else s for s in sets]


def _score(model, tokenizer, sets, languages, identity: str, max_new_tokens: int) -> dict:
    from engine.translate.evaluate import evaluate
    from engine.translate.generate import DecodingSettings, ModelTranslator

    translator = ModelTranslator(model, tokenizer, identity, DecodingSettings(max_new_tokens=max_new_tokens, batch_size=100),
                                 device="cpu")
    result = evaluate(translator, sets, languages=languages, use_cache=False)
    return {d.direction: {"bleu": round(d.scores.bleu, 2), "chrf": round(d.scores.chrf, 2),
                          "off_target": round(d.rates.off_target, 4), "off_target_ref": round(d.rates.off_target_ref, 4)}
            for d in result.directions}


def _recipe(method: str, global_params: dict, setting: dict, base: Path, experts: list[Path]):
    from engine.recipe import from_dict

    per_model = {k: v for k, v in setting.items() if k in ("weight", "density")}
    global_all = {**global_params, **{k: v for k, v in setting.items() if k not in per_model}}
    return from_dict({
        "merge_method": method, "base_model": str(base), "dtype": "float32",
        "models": [{"model": str(e), "parameters": dict(per_model)} for e in experts],
        "parameters": global_all,
    }, source=f"zoo {method} {setting}")


def zoo_groups(zoo_dir: Path) -> dict[str, list[str]]:
    """{"en-x": [en-es, ...], "x-en": [es-en, ...]} from the committed devtest files."""
    targets = sorted(p.stem.split("-")[1] for p in (Path(zoo_dir) / "data" / "devtest").glob("en-*.jsonl"))
    return {"en-x": [f"en-{x}" for x in targets], "x-en": [f"{x}-en" for x in targets]}


def merge_rows(zoo_dir: Path, group: str, dev_size: int | None = 50, max_new_tokens: int = 48) -> list[Row]:
    """The merge rows of one group: per method, the dev-best setting scored on devtest.

    Needs only the base and that group's experts, so a group can be scored while the other
    group's experts are still training.
    """
    zoo_dir = Path(zoo_dir)
    directions = zoo_groups(zoo_dir)[group]
    # language ID answers among all zoo languages: a merge of En→X experts that writes the
    # wrong target language is the failure the off-target rate is there to catch
    languages = ["en", *(d.split("-")[1] for d in zoo_groups(zoo_dir)["en-x"])]
    models = zoo_dir / "models"
    devtest = _sets(zoo_dir, "devtest", directions, None)
    dev = _sets(zoo_dir, "dev", directions, dev_size)
    experts = [models / f"expert-{d}" for d in directions]
    rows = []
    for label, (method, global_params, grid) in GRIDS.items():
        best, best_bleu = None, -1.0
        for setting in tqdm(grid, desc=f"{group} {label} (dev)", leave=False):
            model, tokenizer = merge_into_model(_recipe(method, global_params, setting, models / "base", experts), device="cpu")
            scores = _score(model, tokenizer, dev, languages, f"{label}:{setting}", max_new_tokens)
            bleu = sum(s["bleu"] for s in scores.values()) / len(scores)
            log.info("%s %s %s: dev BLEU %.2f", group, label, setting, bleu)
            if bleu > best_bleu:
                best, best_bleu = setting, bleu
        model, tokenizer = merge_into_model(_recipe(method, global_params, best, models / "base", experts), device="cpu")
        rows.append(Row(label, group, best, _score(model, tokenizer, devtest, languages, f"{label}:{best}", max_new_tokens)))
    return rows


def reference_rows(zoo_dir: Path) -> list[Row]:
    """Base, joint and expert rows: the build's devtest scores from zoo/manifest.json."""
    recorded = json.loads((Path(zoo_dir) / "manifest.json").read_text())["models"]
    keys = ("bleu", "chrf", "off_target", "off_target_ref")
    rows = []
    for group, directions in zoo_groups(zoo_dir).items():
        for name in ("base", "joint"):
            rows.append(Row(name, group, {}, {d: {k: recorded[name]["devtest"][d][k] for k in keys} for d in directions}))
        rows.append(Row("experts", group, {}, {d: {k: recorded[f"expert-{d}"]["devtest"][d][k] for k in keys}
                                               for d in directions}))
    return rows


def to_markdown(rows: list[Row]) -> str:
    """One table per group: a column per direction (chrF / BLEU / off-target %) and the average."""
    out = []
    for group in ("en-x", "x-en"):
        group_rows = [r for r in rows if r.group == group]
        if not group_rows:
            continue
        directions = list(group_rows[0].scores)
        title = "En→X" if group == "en-x" else "X→En"
        out.append(f"#### {title} (devtest; each cell chrF / BLEU / off-target %)\n")
        out.append("| system | setting (chosen on dev) | " + " | ".join(directions) + " | average |")
        out.append("|---|---|" + "---|" * (len(directions) + 1))
        for r in group_rows:
            cells = [f"{r.scores[d]['chrf']:.1f} / {r.scores[d]['bleu']:.1f} / {100 * r.scores[d]['off_target']:.0f}"
                     for d in directions]
            mean = {k: sum(r.scores[d][k] for d in directions) / len(directions) for k in ("chrf", "bleu", "off_target")}
            setting = ", ".join(f"{k}={v}" for k, v in r.setting.items()) or "–"
            out.append(f"| {r.system} | {setting} | " + " | ".join(cells)
                       + f" | **{mean['chrf']:.1f}** / {mean['bleu']:.1f} / {100 * mean['off_target']:.0f} |")
        out.append("")
    return "\n".join(out)


def read_rows(zoo_dir: Path) -> list[Row]:
    """Merge rows saved by earlier `table` runs (empty when none)."""
    path = Path(zoo_dir) / "merge_table.json"
    if not path.is_file():
        return []
    return [Row(**row) for row in json.loads(path.read_text())["rows"]]


def write_table(zoo_dir: Path, rows: list[Row]) -> Path:
    """zoo/merge_table.json: every merge row with its chosen setting and per-direction scores."""
    path = Path(zoo_dir) / "merge_table.json"
    payload = {"grids": {k: {"method": m, "global": g, "grid": grid} for k, (m, g, grid) in GRIDS.items()},
               "rows": [r.__dict__ for r in rows]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
