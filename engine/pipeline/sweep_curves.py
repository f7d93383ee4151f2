"""One parameter of a merge swept over its grid and scored: the Scores page's sweep curves."""

from __future__ import annotations

from collections.abc import Sequence

from engine.parallel import ParallelSet
from engine.pipeline.models import ModelCache
from engine.pipeline.progress import Progress
from engine.pipeline.recipes import build_recipe
from engine.pipeline.scores import evaluate_systems, score_rows
from engine.pipeline.systems import merge_system


def sweep_values(method: str, param: str) -> list[float]:
    """The paper's grid for one parameter of a method (arXiv 2604.02881), else 0.1 … 1.0."""
    from engine.sweep.grid import PAPER_GRIDS

    values = PAPER_GRIDS.get(method, {}).get(param)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    return [round(0.1 * i, 1) for i in range(1, 11)]


def sweep_curve(
    base: str,
    experts: Sequence[str],
    method: str,
    params: dict,
    param: str,
    values: Sequence[float],
    sets: Sequence[ParallelSet],
    models: ModelCache,
    progress: Progress | None = None,
) -> list[dict]:
    """Score the merge at each value of one parameter, the others held at `params`.

    One row per (value, direction and 'avg'): what the Scores page plots as a sweep curve. Each
    point is a recipe with its own content hash, so points already scored (by any session or the
    sweep CLI's identical recipes) come from the cache and are never merged again; a value that
    gives the same model as an earlier one (a weight that normalize cancels:
    engine.recipe.without_inert_weights) takes that value's scores without a merge of its own.
    """
    from engine.recipe import content_hash, without_inert_weights

    rows, scored = [], {}  # content of the merge -> its score rows
    for i, value in enumerate(values):
        if progress:
            progress(i, len(values), f"{method} {param}={value:g}")
        system = merge_system(
            build_recipe(base, experts, method, {**params, param: value}), name=f"{method} {param}={value:g}"
        )
        content = content_hash(without_inert_weights(system.recipe))
        if content not in scored:
            scored[content] = score_rows(evaluate_systems([system], sets, models))
        for row in scored[content]:
            rows.append(
                {
                    **row,
                    "system": system.name,
                    "identity": system.identity,
                    "method": method,
                    "param": param,
                    "value": value,
                }
            )
    if progress:
        progress(len(values), len(values), "sweep done")
    return rows
