"""Recipes from the Models page's pickers, and back: build, parse, hash, show as YAML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import RecipeError
from engine.pipeline.catalog import checkpoints_by_label


def method_specs() -> dict:
    """The merge registry: method name -> MethodSpec (parameters, display name, paper)."""
    from engine.merge.registry import methods

    return methods()


def build_recipe(base: str, experts: Sequence[str], method: str, params: dict, schedules: dict | None = None):
    """A recipe for `method` over `experts` on `base` (checkpoint labels); every expert gets the
    same per-model values, as in the paper (equal weight per expert). `schedules` maps a
    parameter to a list of values interpolated over the layers (mergekit's gradients).
    RecipeError when the pieces do not make a valid recipe.
    """
    from engine import recipe as recipes

    by_label = checkpoints_by_label()
    missing = [name for name in [base, *experts] if name not in by_label]
    if missing:
        raise RecipeError(f"no checkpoint called {', '.join(missing)} under the model roots")
    spec = method_specs()[method]
    values = {**params, **(schedules or {})}
    per_model = {p.name: values[p.name] for p in spec.model_params if p.name in values}
    data = {
        "merge_method": method,
        "base_model": str(by_label[base].path),
        "models": [
            {"model": str(by_label[e].path), **({"parameters": dict(per_model)} if per_model else {})}
            for e in experts
            if e != base
        ],
    }
    if spec.base_use.value == "input" and spec.max_models == 1:
        # passthrough copies its one input; a base_model would be a second input in mergekit.
        del data["base_model"]
    elif spec.base_use.value == "input":  # linear: the base is an ordinary weighted input
        data["models"].append(
            {"model": str(by_label[base].path), **({"parameters": dict(per_model)} if per_model else {})}
        )
    if globals_ := {p.name: values[p.name] for p in spec.global_params if p.name in values}:
        data["parameters"] = globals_
    return recipes.from_dict(data, source="the recipe built on the Models page")


def recipe_yaml(recipe) -> str:
    """mergekit YAML of a recipe."""
    return recipe.to_yaml()


def parse_recipe(text: str, source: str = "the pasted recipe"):
    """A recipe from mergekit YAML; RecipeError naming the problem."""
    from engine import recipe as recipes

    return recipes.loads(text, source)


def recipe_hash(recipe) -> str:
    """Content hash of a merge (weights fingerprints, canonical parameters): its cache identity."""
    from engine import recipe as recipes

    return recipes.content_hash(recipe)


@dataclass(frozen=True)
class RecipeView:
    """What the Models page's pickers need to show a loaded recipe."""

    base: str | None  # None: the recipe names no base (a single-input passthrough)
    experts: list[str]
    method: str
    params: dict  # scalar values, one per parameter (the first expert's, then the global ones)
    schedules: dict  # parameter -> list of values over the layers
    notes: list[str]  # what the pickers cannot show (per-expert differences, filters)


def recipe_view(recipe) -> RecipeView:
    """Map a recipe's checkpoint paths back to labels; RecipeError for paths that are not discovered."""
    from engine.checkpoints import resolve_model_path

    by_path = {c.path: label for label, c in checkpoints_by_label().items()}

    def label(ref: str) -> str:
        real = resolve_model_path(ref)
        if real not in by_path:
            raise RecipeError(f"{recipe.source or 'recipe'}: {ref} is not a checkpoint under the model roots")
        return by_path[real]

    where = recipe.source or "recipe"
    if recipe.slices:
        raise RecipeError(
            f"{where}: the pickers show whole-model recipes; merge a slices: recipe with "
            "python -m engine merge and add the output folder under a model root"
        )
    single = recipe.method.base_use.value == "input" and recipe.method.max_models == 1
    if not recipe.base_model and not single:
        raise RecipeError(f"{where}: the dashboard needs a base_model to compare against")
    base = label(recipe.base_model) if recipe.base_model else None
    experts = [label(m.model) for m in recipe.models if m.model != recipe.base_model]
    params, schedules, notes = {}, {}, []
    for scope in ([recipe.models[0].parameters] if recipe.models else []) + [recipe.parameters]:
        for name, value in scope.items():
            if isinstance(value, (int, float)):  # bool included
                params.setdefault(name, value)
            elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                schedules.setdefault(name, [float(v) for v in value])
            else:
                notes.append(f"parameter {name!r} uses tensor filters; the pickers show its default")
    if any(m.parameters != recipe.models[0].parameters for m in recipe.models[1:]):
        notes.append("experts have different parameters; the pickers show the first expert's")
    return RecipeView(base, experts, recipe.merge_method, params, schedules, notes)
