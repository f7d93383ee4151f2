"""GRID.yaml: what a sweep merges, on which data, over which grids; validated before any work.

    base_model: zoo/models/base
    groups:                         # one merge per group, as the paper merges En→X and X→En apart
      en-x: {en-es: zoo/models/expert-en-es, en-ru: zoo/models/expert-en-ru}
      x-en: {es-en: zoo/models/expert-es-en, ru-en: zoo/models/expert-ru-en}
    joint: zoo/models/joint         # optional extra table row
    each_expert: true               # one row per expert on every direction of its group (the paper's);
                                    # false: each expert on its own direction only
    data: {dev: zoo/data/dev, devtest: zoo/data/devtest}   # folders of <src>-<tgt>.jsonl
    methods:                        # "paper" = the paper's grid; or parameter: [values]
      task_arithmetic: paper
      ties: {density: [0.3, 0.5], weight: [1.0], normalize: [true]}
      iso_cts: {lambda: [0.3, 1.0]}   # any registered method, MergeScope's own ones too
    metric: bleu                    # selection metric on dev: bleu, chrf or chrfpp
    dev_limit: 100                  # optional: first N dev pairs per direction
    devtest_limit: null
    decoding: {max_new_tokens: 48, batch_size: 32}   # default: the paper's 512 tokens, postprocess: paper
    languages: [en, es, ru]         # optional: language ID answer set (default: every data language)
    seed: 0                         # for methods that drop at random (DARE)

Instead of `groups`, a single group may be given as `experts: {direction: path}`. Relative
paths are relative to the folder holding GRID.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import DataError, RecipeError, SettingsError
from engine.parallel import ParallelSet, load_jsonl
from engine.settings import ZOO_MAX_NEW_TOKENS
from engine.sweep.grid import PAPER_GRIDS, SMALL_GRIDS, GridPoint, expand, validate_grid
from engine.translate.evaluate import validate_sets
from engine.translate.generate import DecodingSettings

METRICS = ("bleu", "chrf", "chrfpp")
_KEYS = {
    "base_model",
    "groups",
    "experts",
    "joint",
    "data",
    "methods",
    "metric",
    "dev_limit",
    "devtest_limit",
    "decoding",
    "languages",
    "seed",
    "each_expert",
}


@dataclass
class SweepConfig:
    """A validated sweep: every path resolved, every grid expanded, every data file loaded."""

    base_model: Path
    groups: dict[str, dict[str, Path]]  # group -> direction -> expert checkpoint
    dev: dict[str, ParallelSet]  # direction -> dev pairs
    devtest: dict[str, ParallelSet]
    grids: dict[str, list[GridPoint]]  # method -> points
    languages: tuple[str, ...]
    joint: Path | None = None
    metric: str = "bleu"
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    seed: int = 0
    each_expert: bool = True
    source: str = "grid"

    def points(self) -> list[tuple[str, GridPoint]]:
        """(group, point) for every merge the sweep will score on dev."""
        return [(g, p) for g in self.groups for points in self.grids.values() for p in points]


def _path(value: Any, folder: Path, where: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{where}: expected a path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (folder / p)


def _sets(folder: Path, directions: list[str], limit: int | None, where: str) -> dict[str, ParallelSet]:
    out = {}
    for d in directions:
        file = folder / f"{d}.jsonl"
        if not file.is_file():
            raise DataError(f"{where}: no data for direction {d}: {file} does not exist")
        pairs = load_jsonl(file)
        if pairs.direction != d:
            raise DataError(f"{file}: holds {pairs.direction} pairs, expected {d}")
        out[d] = pairs.head(limit) if limit else pairs
    return out


def _limit(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipeError(f"{where}: expected a positive integer, got {value!r}")
    return value


def from_dict(data: Any, folder: Path = Path("."), source: str = "grid") -> SweepConfig:
    """Validate a parsed GRID.yaml; RecipeError / DataError naming the file and the problem."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level")
    if unknown := sorted(set(data) - _KEYS):
        raise RecipeError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}")
    if "base_model" not in data:
        raise RecipeError(f"{source}: missing 'base_model'")
    base = _path(data["base_model"], folder, f"{source}: base_model")
    if ("groups" in data) == ("experts" in data):
        raise RecipeError(f"{source}: give either 'groups' or 'experts' (one group)")
    raw_groups = data["groups"] if "groups" in data else {"experts": data["experts"]}
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise RecipeError(f"{source}: 'groups' must map a group name to {{direction: expert path}}")
    groups: dict[str, dict[str, Path]] = {}
    for name, experts in raw_groups.items():
        if not isinstance(experts, dict) or not experts:
            raise RecipeError(f"{source}: group {name!r} must map directions (e.g. en-es) to expert checkpoints")
        for direction in experts:
            if not isinstance(direction, str) or direction.count("-") != 1:
                raise RecipeError(f"{source}: group {name!r}: {direction!r} is not a direction like en-es")
        groups[str(name)] = {d: _path(p, folder, f"{source}: group {name}: {d}") for d, p in experts.items()}

    data_cfg = data.get("data")
    if not isinstance(data_cfg, dict) or set(data_cfg) != {"dev", "devtest"}:
        raise RecipeError(f"{source}: 'data' must give 'dev' and 'devtest' folders of <src>-<tgt>.jsonl files")
    directions = list(dict.fromkeys(d for g in groups.values() for d in g))
    dev = _sets(
        _path(data_cfg["dev"], folder, f"{source}: data.dev"),
        directions,
        _limit(data.get("dev_limit"), f"{source}: dev_limit"),
        source,
    )
    devtest = _sets(
        _path(data_cfg["devtest"], folder, f"{source}: data.devtest"),
        directions,
        _limit(data.get("devtest_limit"), f"{source}: devtest_limit"),
        source,
    )
    languages = validate_sets(list(dev.values()), data.get("languages"))
    validate_sets(list(devtest.values()), languages)

    methods = data.get("methods", {m: "paper" for m in ("task_arithmetic", "ties", "dare_linear", "sce")})
    if not isinstance(methods, dict) or not methods:
        raise RecipeError(f"{source}: 'methods' must map method names to 'paper' or a grid")
    grids = {m: expand(m, validate_grid(m, g, f"{source}: methods")) for m, g in methods.items()}

    metric = data.get("metric", "bleu")
    if metric not in METRICS:
        raise RecipeError(f"{source}: metric {metric!r} is not one of {', '.join(METRICS)}")
    decoding_cfg = data.get("decoding") or {}
    if not isinstance(decoding_cfg, dict) or set(decoding_cfg) - {"max_new_tokens", "batch_size", "postprocess"}:
        raise RecipeError(f"{source}: 'decoding' takes max_new_tokens, batch_size and postprocess")
    try:
        decoding = DecodingSettings(**decoding_cfg)
    except SettingsError as err:
        raise RecipeError(f"{source}: {err}") from None
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"{source}: seed must be an integer")
    joint = _path(data["joint"], folder, f"{source}: joint") if data.get("joint") else None
    each_expert = data.get("each_expert", True)
    if not isinstance(each_expert, bool):
        raise RecipeError(f"{source}: each_expert must be true or false")
    return SweepConfig(
        base_model=base,
        groups=groups,
        dev=dev,
        devtest=devtest,
        grids=grids,
        languages=languages,
        joint=joint,
        metric=metric,
        decoding=decoding,
        seed=seed,
        each_expert=each_expert,
        source=source,
    )


def load(path: str | Path) -> SweepConfig:
    """Read and validate GRID.yaml."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RecipeError(f"{path}: cannot read sweep grid ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from None
    return from_dict(data, path.resolve().parent, str(path))


def zoo_grid(
    zoo_dir: str | Path, grid: str = "small", dev_limit: int | None = 50, max_new_tokens: int = ZOO_MAX_NEW_TOKENS
) -> dict:
    """GRID.yaml contents for the demo zoo: En→X and X→En groups of the experts present, the joint
    model when built, and the small grid (or grid="paper")."""
    zoo = Path(zoo_dir).resolve()
    if not (zoo / "models" / "base").is_dir():
        raise DataError(f"{zoo}: no demo zoo here (models/base is missing); build it with `python -m engine zoo build`")
    if grid not in ("small", "paper"):
        raise RecipeError(f"zoo grid must be 'small' or 'paper', got {grid!r}")
    experts = {p.stem: zoo / "models" / f"expert-{p.stem}" for p in sorted((zoo / "data" / "dev").glob("*.jsonl"))}
    experts = {d: str(p) for d, p in experts.items() if p.is_dir()}
    groups = {
        "en-x": {d: p for d, p in experts.items() if d.startswith("en-")},
        "x-en": {d: p for d, p in experts.items() if d.endswith("-en")},
    }
    joint = zoo / "models" / "joint"
    return {
        "base_model": str(zoo / "models" / "base"),
        "groups": {name: g for name, g in groups.items() if g},
        **({"joint": str(joint)} if joint.is_dir() else {}),
        "data": {"dev": str(zoo / "data" / "dev"), "devtest": str(zoo / "data" / "devtest")},
        "methods": SMALL_GRIDS if grid == "small" else {m: "paper" for m in PAPER_GRIDS},
        "dev_limit": dev_limit,
        "decoding": {"max_new_tokens": max_new_tokens, "batch_size": 100},
    }
