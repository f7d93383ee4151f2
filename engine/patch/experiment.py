"""The routed layer-patching experiment: each direction scored with the merge whose layer set comes
from that direction's own expert, beside random-block controls of the same size, the merge, the
expert and the base.

Protocol of Gain, Ekbal & Singh (arXiv 2604.02881), `merging/eval_en_indic_layer_patch.py` in
their code: test-time routing by target language, the last blocks (with the final norm) taken
from the target's expert, and seeded random blocks outside them as controls. Every direction
reuses one merged model: patched in place, scored, restored (engine.patch.patching).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from engine.device import default_device
from engine.errors import DataError
from engine.parallel import ParallelSet
from engine.patch.layers import LayerSet, control_sets
from engine.patch.patching import patched
from engine.patch.systems import patched_system
from engine.pipeline.data import data_languages
from engine.pipeline.models import ModelCache
from engine.pipeline.progress import Progress
from engine.pipeline.scores import decoding_settings, evaluate_systems
from engine.pipeline.systems import System, system_tokenizer

METRICS = ("chrf", "bleu", "off_target")
ROLES = ("base", "merge", "patched", "control", "expert")


@dataclass(frozen=True)
class PatchScore:
    """One system's scores on one direction: `role` is one of ROLES; `layers` the patched set."""

    direction: str
    role: str
    layers: str
    seed: int | None
    blocks: tuple[int, ...]
    bleu: float
    chrf: float
    off_target: float


@dataclass
class PatchExperiment:
    """Every score of one run, and the routed layer sets it compared (in order)."""

    scores: list[PatchScore]
    layer_sets: list[str]
    controls: int
    controls_from: str

    def table(self) -> list[dict]:
        return summary_table(self.scores, self.layer_sets)


def experts_by_direction(experts: Sequence[System], sets: Sequence[ParallelSet]) -> dict[str, System]:
    """The expert that routes each direction; DataError naming a direction no expert was trained for."""
    by_direction = {e.direction: e for e in experts if e.direction}
    if missing := [s.direction for s in sets if s.direction not in by_direction]:
        raise DataError(
            f"no expert for direction(s) {', '.join(missing)} among {', '.join(e.name for e in experts)}: "
            "routing needs each direction's own expert (named like 'expert-en-de')"
        )
    return {s.direction: by_direction[s.direction] for s in sets}


def run_patch_experiment(
    base: System,
    merge: System,
    experts: Sequence[System],
    sets: Sequence[ParallelSet],
    layer_sets: Sequence[LayerSet],
    models: ModelCache,
    controls: int = 5,
    seed: int = 0,
    controls_from: str = "rest",
    progress: Progress | None = None,
) -> PatchExperiment:
    """Score base, merge, experts, and per routed layer set the patched merge and `controls` random
    controls of its size, every direction with its own expert's tensors. Scores are cached by
    system identity, so a rerun (or the dashboard after the CLI) computes nothing twice."""
    routes = experts_by_direction(experts, sets)
    num_layers = next(iter(routes.values())).checkpoint.summary.layers
    plan = []  # (role, layer set, seed, the routed set a control stands beside)
    for routed in layer_sets:
        plan.append(("patched", routed, None, routed.text))
        if routed.blocks:
            draws = control_sets(routed, num_layers, controls, seed, controls_from)
            plan += [("control", drawn, seed + i, routed.text) for i, drawn in enumerate(draws)]
    total = len(plan) * len(sets) + 1
    if progress:
        progress(0, total, "scoring base, merge and experts")
    # Each expert's row is its own direction, the bar a patch is measured against.
    fixed = evaluate_systems([base, merge, *routes.values()], sets, models, experts_everywhere=False)
    by_direction = {
        role: {d.direction: d for d in r.directions} for role, r in zip(["base", "merge"], fixed[:2], strict=True)
    }
    expert_scores = {r.directions[0].direction: r.directions[0] for r in fixed[2:]}
    scores = [_score(d, "base", "", None, ()) for d in by_direction["base"].values()]
    scores += [_score(d, "merge", "", None, ()) for d in by_direction["merge"].values()]
    scores += [_score(expert_scores[s.direction], "expert", "", None, ()) for s in sets]
    done = 1
    for role, layers, control_seed, routed_text in plan:
        for pairs in sets:
            if progress:
                progress(done, total, f"{role} {layers.text} on {pairs.direction}")
            if not layers.blocks and not layers.parts:  # nothing patched: the merge itself
                result = by_direction["merge"][pairs.direction]
            else:
                system = patched_system(merge, routes[pairs.direction], layers, pairs.direction)
                result = score_patched(system, pairs, models)
            scores.append(_score(result, role, routed_text, control_seed, layers.blocks))
            done += 1
    if progress:
        progress(total, total, "patching done")
    return PatchExperiment(scores, [ls.text for ls in layer_sets], controls, controls_from)


def _score(direction_result, role, layers, seed, blocks) -> PatchScore:
    d = direction_result
    return PatchScore(
        d.direction, role, layers, seed, tuple(blocks), d.metric("bleu"), d.metric("chrf"), d.metric("off_target")
    )


def score_patched(system: System, pairs: ParallelSet, models: ModelCache):
    """One patched system on one direction, through the translation cache; on a miss, the merge's
    live model is patched in place under its lock, used, and restored."""
    from engine.translate.evaluate import evaluate, languages_in_play
    from engine.translate.generate import LazyModelTranslator, prompt_signature

    langs = tuple(sorted(set(data_languages()) | set(languages_in_play([pairs]))))
    with contextlib.ExitStack() as held:

        def load():
            loaded = models.get(system.patch.merge)
            held.enter_context(loaded.lock)
            held.enter_context(patched(loaded.model, system.patch.source.checkpoint, system.patch.layers))
            return loaded.model, loaded.tokenizer

        translator = LazyModelTranslator(
            system.identity, load, prompt_signature(system_tokenizer(system)), decoding_settings(), default_device()
        )
        return evaluate(translator, [pairs], system=system.name, languages=langs).directions[0]


def summary_table(scores: Sequence[PatchScore], layer_sets: Sequence[str]) -> list[dict]:
    """One row per (routed set, direction) and an 'avg' row per set: base, merge, patched, the
    controls' mean and spread (sample standard deviation over seeds; 0 for one control), expert.

    The 'avg' row averages each system over the directions; its control spread is over seeds of
    each seed's direction average.
    """
    fixed = {(s.role, s.direction): s for s in scores if s.role in ("base", "merge", "expert")}
    directions = sorted({s.direction for s in scores})
    rows = []
    for layers in layer_sets:
        patched_ = {s.direction: s for s in scores if s.role == "patched" and s.layers == layers}
        controls = [s for s in scores if s.role == "control" and s.layers == layers]
        seeds = sorted({s.seed for s in controls})
        per_direction = []
        for d in directions:
            row = {"layers": layers, "direction": d, "controls": len(seeds)}
            for m in METRICS:
                row[f"base_{m}"] = getattr(fixed[("base", d)], m)
                row[f"merge_{m}"] = getattr(fixed[("merge", d)], m)
                row[f"patched_{m}"] = getattr(patched_[d], m)
                values = [getattr(s, m) for s in controls if s.direction == d]
                row[f"control_mean_{m}"], row[f"control_spread_{m}"] = _mean_spread(values)
                row[f"expert_{m}"] = getattr(fixed[("expert", d)], m)
            per_direction.append(row)
        avg = {"layers": layers, "direction": "avg", "controls": len(seeds)}
        for m in METRICS:
            for col in ("base", "merge", "patched", "expert"):
                avg[f"{col}_{m}"] = statistics.fmean(r[f"{col}_{m}"] for r in per_direction)
            by_seed = [
                statistics.fmean(getattr(s, m) for s in controls if s.seed == seed and s.direction in directions)
                for seed in seeds
            ]
            avg[f"control_mean_{m}"], avg[f"control_spread_{m}"] = _mean_spread(by_seed)
        rows += per_direction + [avg]
    return rows


def _mean_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def gap_closed(row: dict, metric: str = "chrf") -> float | None:
    """Share of the merge → expert gap the patch closes: (patched − merge) / (expert − merge)."""
    gap = row[f"expert_{metric}"] - row[f"merge_{metric}"]
    return (row[f"patched_{metric}"] - row[f"merge_{metric}"]) / gap if gap else None
