"""Sweep grids: the paper's hyperparameter grids, user grids from GRID.yaml, and their validation.

Paper grids (Gain, Ekbal & Singh, arXiv 2604.02881, chosen on dev by average BLEU):
  task arithmetic  weight 0.1 … 1.0
  TIES             density 0.1 … 0.9 × weight 0.1 … 2.5, normalize on
  DARE (linear)    density 0.01 … 0.9 × weight 0.1 … 0.9, rescale on, normalize on
  SCE              select_topk 0.1 … 0.9
Steps of 0.1 throughout; DARE's density list starts at 0.01 then 0.1, 0.2, … 0.9.

A grid maps each parameter to a list of values; a point is one value per parameter. Per-model
parameters (weight, density) are given to every expert alike (the paper merges with equal
weight per expert); global ones (normalize, rescale, select_topk) go to the recipe's top level.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import RecipeError
from engine.merge.params import coerce
from engine.merge.registry import get_method
from engine.merge.spec import BaseUse, Scope


def _steps(start: float, stop: float, step: float = 0.1) -> list[float]:
    n = round((stop - start) / step)
    return [round(start + i * step, 4) for i in range(n + 1)]


PAPER_GRIDS: dict[str, dict[str, list]] = {
    "task_arithmetic": {"weight": _steps(0.1, 1.0)},
    "ties": {"density": _steps(0.1, 0.9), "weight": _steps(0.1, 2.5), "normalize": [True]},
    "dare_linear": {
        "density": [0.01] + _steps(0.1, 0.9),
        "weight": _steps(0.1, 0.9),
        "rescale": [True],
        "normalize": [True],
    },
    "sce": {"select_topk": _steps(0.1, 0.9)},
}


# A coarse grid for the demo zoo on a CPU: 42 points per group instead of the paper's 334: the
# paper's four methods, mergekit's others that merge any number of experts on a base, and the
# interference-aware methods (TSV-Merge, Iso-C, Iso-CTS, PCB, LiNeS), whose λ scales a sum-sized
# task vector (TSV, Iso, LiNeS) or a weighted mean (PCB).
SMALL_GRIDS: dict[str, dict[str, list]] = {
    "task_arithmetic": {"weight": [0.1, 0.3, 0.5, 0.7, 1.0]},
    "ties": {"density": [0.3, 0.5, 0.7], "weight": [0.5, 1.0], "normalize": [True]},
    "dare_linear": {"density": [0.1, 0.5, 0.9], "weight": [0.5], "rescale": [True], "normalize": [True]},
    "sce": {"select_topk": [0.1, 0.5, 0.9]},
    # mergekit's methods beyond the paper's four that merge any number of experts on a base.
    # The zoo's task-vector entries have median |τ| ≈ 0.007: RAM's epsilon spans keep-all to about half.
    "multislerp": {"weight": [1.0]},
    "ram": {"epsilon": [0.00001, 0.005, 0.01]},
    "ramplus_tl": {"epsilon": [0.005, 0.01], "r": [0.1, 1.0], "alpha": [0.2]},
    "tsv_merge": {"lambda": [0.1, 0.3, 1.0]},
    "iso_c": {"lambda": [0.1, 0.3, 1.0]},
    "iso_cts": {"lambda": [0.1, 0.3, 1.0], "common_space_fraction": [0.8]},
    "pcb_merge": {"density": [0.1, 0.5], "lambda": [0.5, 1.0]},
    # LiNeS scales the summed task vector from alpha (first block) to alpha + beta (last block).
    "lines": {"alpha": [0.05, 0.1], "beta": [0.1, 0.3]},
}


@dataclass(frozen=True)
class GridPoint:
    """One setting of one method."""

    method: str
    params: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs: hashable and ordered

    @property
    def label(self) -> str:
        return f"{self.method} " + " ".join(f"{k}={v}" for k, v in self.params)

    def split(self) -> tuple[dict, dict]:
        """(global parameters, per-model parameters) as a recipe wants them."""
        spec = get_method(self.method)
        shared, per_model = {}, {}
        for name, value in self.params:
            (per_model if spec.param(name).scope != Scope.GLOBAL else shared)[name] = value
        return shared, per_model


def validate_grid(method: str, grid: Any, where: str = "grid") -> dict[str, list]:
    """A method's grid as {parameter: [values]}; RecipeError naming the unknown method,
    parameter or bad value. `grid` may be "paper" (the paper's grid for that method)."""
    try:
        spec = get_method(method)
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    if spec.base_use == BaseUse.INPUT:  # linear, karcher: the base is one more averaged input, not an origin
        raise RecipeError(
            f"{where}: method {method!r} does not merge task vectors on a base; sweeps merge experts on the base model"
        )
    if grid == "paper" or grid is None:
        if method not in PAPER_GRIDS:
            raise RecipeError(
                f"{where}: no paper grid for {method!r} (paper grids: {', '.join(PAPER_GRIDS)}); "
                "give its parameters and values"
            )
        grid = PAPER_GRIDS[method]
    if not isinstance(grid, Mapping) or not grid:
        raise RecipeError(f"{where}: grid for {method!r} must be 'paper' or a mapping of parameter to values")
    out = {}
    for name, values in grid.items():
        param = spec.param(name)
        if param is None:
            known = ", ".join(p.name for p in spec.params)
            raise RecipeError(f"{where}: {method!r} has no parameter {name!r} (known: {known})")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise RecipeError(f"{where}: {method}.{name}: empty list of values")
        out[name] = [coerce(v, param.kind, f"{where}: {method}.{name}") for v in values]
    missing = [p.name for p in spec.params if p.required and p.name not in out]
    if missing:
        raise RecipeError(f"{where}: grid for {method!r} lacks required parameter(s) {', '.join(missing)}")
    return out


def expand(method: str, grid: Mapping[str, list]) -> list[GridPoint]:
    """Every combination of a validated grid, in a stable order."""
    names = sorted(grid)
    return [GridPoint(method, tuple(zip(names, values))) for values in itertools.product(*(grid[n] for n in names))]
