"""Merge hyperparameter sweeps per arXiv 2604.02881: grids, in-memory merges scored on dev, the best
per method on devtest, the paper-style table. Scores: sacreBLEU (Post 2018) via engine.translate."""

from engine.sweep.backend import LocalBackend
from engine.sweep.backends import open_backend
from engine.sweep.config import SweepConfig, from_dict, load, zoo_grid
from engine.sweep.grid import PAPER_GRIDS, SMALL_GRIDS, GridPoint, expand, validate_grid
from engine.sweep.report import points_csv, table_csv, table_markdown, write_sweep
from engine.sweep.run import PointResult, SweepResult, build_recipe, point_results, preflight, run_sweep

__all__ = [
    "PAPER_GRIDS",
    "SMALL_GRIDS",
    "GridPoint",
    "LocalBackend",
    "PointResult",
    "SweepConfig",
    "SweepResult",
    "build_recipe",
    "expand",
    "from_dict",
    "load",
    "open_backend",
    "point_results",
    "points_csv",
    "preflight",
    "run_sweep",
    "table_csv",
    "table_markdown",
    "validate_grid",
    "write_sweep",
    "zoo_grid",
]
