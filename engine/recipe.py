"""Merge recipes in mergekit's YAML: read, validate, write back, and hash for the cache.

Supported keys: merge_method, base_model, models (each `model` with optional `parameters`) or
slices (each with `sources`: `model`, `layer_range: [start, stop)` and optional `parameters`,
and optionally its own `base_model` and `parameters`), parameters, dtype, out_dtype,
tokenizer_source / tokenizer.source ("base" or a referenced model; every input must share one
vocabulary), chat_template (a Jinja string or "auto").
Not supported, refused with a RecipeError: modules, LoRA references (`path+lora`),
tokenizer_source "union", token surgery and a slice's residual_weight (unused by mergekit 0.1.5).

Slices stack layer ranges: output layer k of a slice is merged from layer start + k of each of
its sources, and the output has as many layers as the slices' ranges together (mergekit's
frankenmerge / layer-stacking syntax). Parameters are looked up in a source's own, then its
slice's, then the top-level parameters.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import RecipeError
from engine.merge.params import check_setting
from engine.merge.registry import get_method
from engine.merge.spec import BaseUse, MethodSpec, Scope

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16", "float64")
HASH_SALT = "mergescope-merge-v1"  # bump when merge results change for the same recipe
_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
}


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class SliceSource:
    """Layers [start, stop) of one model, as one input of an output slice."""

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSlice:
    """A run of output layers merged from equally long layer ranges of its sources."""

    sources: list[SliceSource]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        start, stop = self.sources[0].layer_range
        return stop - start


@dataclass
class Recipe:
    """A parsed, validated recipe; model references are paths as written. Either `models`
    (whole models) or `slices` (layer ranges) is non-empty."""

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    slices: list[OutputSlice] = field(default_factory=list)
    source: str | None = field(default=None, compare=False)  # the file it came from, for messages

    @property
    def method(self) -> MethodSpec:
        return get_method(self.merge_method)

    def merge_inputs(self) -> tuple[str | None, list[ModelEntry]]:
        """(base or None, the models merged against it), in recipe order, as the method sees them.

        Methods that treat the base as an ordinary input (linear) get it appended, as mergekit does.
        """
        spec = self.method
        if spec.base_use == BaseUse.INPUT:
            inputs = list(self.models)
            if self.base_model and all(m.model != self.base_model for m in inputs):
                inputs.append(ModelEntry(self.base_model))
            return None, inputs
        return self.base_model, [m for m in self.models if m.model != self.base_model]

    def slice_inputs(self, out_slice: OutputSlice) -> tuple[SliceSource | None, list[SliceSource]]:
        """(the base source or None, the sources merged against it) of one slice.

        As in mergekit, a slice's base (its own base_model, else the recipe's) must be one of
        its sources, and methods that treat the base as an ordinary input see every source.
        """
        if self.method.base_use == BaseUse.INPUT:
            return None, list(out_slice.sources)
        base_ref = out_slice.base_model or self.base_model
        base = next((s for s in out_slice.sources if s.model == base_ref), None)
        return base, [s for s in out_slice.sources if s is not base]

    def referenced_models(self) -> list[str]:
        seen = [self.base_model] if self.base_model else []
        refs = [m.model for m in self.models]
        for out_slice in self.slices:
            refs += ([out_slice.base_model] if out_slice.base_model else []) + [s.model for s in out_slice.sources]
        for ref in refs:
            if ref not in seen:
                seen.append(ref)
        return seen

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        if self.slices:
            out["slices"] = [_slice_dict(s) for s in self.slices]
        else:
            out["models"] = [
                {"model": m.model, **({"parameters": copy.deepcopy(m.parameters)} if m.parameters else {})}
                for m in self.models
            ]
        if self.parameters:
            out["parameters"] = copy.deepcopy(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_yaml(self) -> str:
        """mergekit-readable YAML (lists of numbers in flow style, like mergekit writes them).

        A method mergekit does not implement gets a first-line comment saying so.
        """
        text = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        note = self.method.mergekit_note
        return f"# {note}\n{text}" if note else text

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


def _slice_dict(out_slice: OutputSlice) -> dict:
    sources = [
        {
            "model": s.model,
            "layer_range": list(s.layer_range),
            **({"parameters": copy.deepcopy(s.parameters)} if s.parameters else {}),
        }
        for s in out_slice.sources
    ]
    out: dict[str, Any] = {"sources": sources}
    if out_slice.base_model:
        out["base_model"] = out_slice.base_model
    if out_slice.parameters:
        out["parameters"] = copy.deepcopy(out_slice.parameters)
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper, data):
    flow = bool(data) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _model_ref(value: Any, where: str) -> str:
    if isinstance(value, dict) and set(value) == {"model"}:  # mergekit's long form {model: {path: ...}}
        value = value["model"].get("path") if isinstance(value["model"], dict) else value["model"]
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{where}: expected a checkpoint path, got {value!r}")
    if "+" in value:
        raise RecipeError(f"{where}: LoRA references ({value!r}) are not supported; merge the adapter first")
    return value


def from_dict(data: Any, source: str | None = None) -> Recipe:
    """Validate a parsed YAML mapping into a Recipe; RecipeError naming the file and problem."""
    where = source or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    if "modules" in data:
        raise RecipeError(
            f"{where}: 'modules' is not supported; list whole models under 'models' or layers under 'slices'"
        )
    if unknown := sorted(set(data) - _KEYS):
        raise RecipeError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    if "merge_method" not in data:
        raise RecipeError(f"{where}: missing 'merge_method'")
    try:
        spec = get_method(data["merge_method"])
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    if ("models" in data) == ("slices" in data):
        raise RecipeError(f"{where}: give exactly one of 'models' (whole models) and 'slices' (layer ranges)")
    models, slices = [], []
    if "slices" in data:
        slices = _slices(data["slices"], where)
    else:
        models_raw = data.get("models")
        if not isinstance(models_raw, list) or not models_raw:
            raise RecipeError(f"{where}: 'models' must be a non-empty list of {{model: PATH, parameters: ...}}")
        for i, entry in enumerate(models_raw):
            if not isinstance(entry, dict) or "model" not in entry:
                raise RecipeError(f"{where}: models[{i}] must be a mapping with a 'model' path")
            if extra := set(entry) - {"model", "parameters"}:
                raise RecipeError(f"{where}: models[{i}] has unknown key(s) {sorted(extra)}")
            params = _mapping(entry.get("parameters"), f"{where}: models[{i}].parameters")
            models.append(ModelEntry(_model_ref(entry["model"], f"{where}: models[{i}].model"), params))
    base = _model_ref(data["base_model"], f"{where}: base_model") if data.get("base_model") else None
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RecipeError(f"{where}: 'parameters' must be a mapping")

    tokenizer_source = data.get("tokenizer_source")
    if "tokenizer" in data:
        tok = data["tokenizer"]
        if tokenizer_source is not None:
            raise RecipeError(f"{where}: give either 'tokenizer_source' or 'tokenizer', not both")
        if not isinstance(tok, dict) or set(tok) - {"source"}:
            raise RecipeError(f"{where}: only 'tokenizer: {{source: ...}}' is supported (no token surgery)")
        tokenizer_source = tok.get("source")
    recipe = Recipe(
        merge_method=spec.name,
        models=models,
        base_model=base,
        parameters=dict(parameters),
        dtype=data.get("dtype"),
        out_dtype=data.get("out_dtype"),
        tokenizer_source=tokenizer_source,
        chat_template=data.get("chat_template"),
        slices=slices,
        source=source,
    )
    validate(recipe)
    return recipe


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a mapping")
    return dict(value)


def _layer_range(value: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        raise RecipeError(f"{where}: expected [start, stop] with 0 <= start < stop, got {value!r}")
    return value[0], value[1]


def _slices(raw: Any, where: str) -> list[OutputSlice]:
    """The `slices:` list of mergekit's frankenmerge syntax, checked entry by entry."""
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{where}: 'slices' must be a non-empty list of {{sources: [...]}}")
    slices = []
    for i, entry in enumerate(raw):
        at = f"{where}: slices[{i}]"
        if not isinstance(entry, dict) or "sources" not in entry:
            raise RecipeError(f"{at} must be a mapping with 'sources'")
        if "residual_weight" in entry:
            raise RecipeError(f"{at}: residual_weight is not supported (mergekit 0.1.5 does not use it)")
        if extra := set(entry) - {"sources", "base_model", "parameters"}:
            raise RecipeError(f"{at} has unknown key(s) {sorted(extra)}")
        if not isinstance(entry["sources"], list) or not entry["sources"]:
            raise RecipeError(f"{at}.sources must be a non-empty list of {{model, layer_range}}")
        sources = []
        for j, src in enumerate(entry["sources"]):
            sat = f"{at}.sources[{j}]"
            if not isinstance(src, dict) or not {"model", "layer_range"} <= set(src):
                raise RecipeError(f"{sat} must be a mapping with 'model' and 'layer_range'")
            if extra := set(src) - {"model", "layer_range", "parameters"}:
                raise RecipeError(f"{sat} has unknown key(s) {sorted(extra)}")
            sources.append(
                SliceSource(
                    _model_ref(src["model"], f"{sat}.model"),
                    _layer_range(src["layer_range"], f"{sat}.layer_range"),
                    _mapping(src.get("parameters"), f"{sat}.parameters"),
                )
            )
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
        if len(lengths) > 1:
            raise RecipeError(f"{at}: every source must span the same number of layers, got {sorted(lengths)}")
        base = _model_ref(entry["base_model"], f"{at}.base_model") if entry.get("base_model") else None
        slices.append(OutputSlice(sources, base, _mapping(entry.get("parameters"), f"{at}.parameters")))
    return slices


def validate(recipe: Recipe) -> None:
    """Structure checks that need no checkpoint: method, base, counts, parameters, dtypes."""
    where = recipe.source or "recipe"
    spec = recipe.method
    if recipe.slices:
        for i, out_slice in enumerate(recipe.slices):
            _validate_slice(recipe, i, out_slice)
    else:
        if spec.base_use == BaseUse.REQUIRED and not recipe.base_model:
            raise RecipeError(f"{where}: merge_method {spec.name!r} needs a base_model")
        _, inputs = recipe.merge_inputs()
        _check_count(spec, [m.model for m in inputs], where, "the recipe")
        scopes = [("parameters", recipe.parameters)] + [(f"model {m.model}", m.parameters) for m in recipe.models]
        _check_parameters(spec, scopes, where)
        _check_required(spec, [(m.model, [m.parameters, recipe.parameters]) for m in inputs], recipe.parameters, where)
    for dtype_key in ("dtype", "out_dtype"):
        value = getattr(recipe, dtype_key)
        if value is not None and value not in DTYPES:
            raise RecipeError(f"{where}: {dtype_key} {value!r} is not one of {', '.join(DTYPES)}")
    if recipe.tokenizer_source not in (None, "base") and recipe.tokenizer_source not in recipe.referenced_models():
        raise RecipeError(
            f"{where}: tokenizer_source {recipe.tokenizer_source!r} is not supported; use 'base' or one of the "
            "recipe's models (MergeScope merges only checkpoints that share one vocabulary)"
        )
    if recipe.chat_template is not None and recipe.chat_template != "auto" and "{" not in str(recipe.chat_template):
        raise RecipeError(
            f"{where}: chat_template must be 'auto' or a Jinja template string; named templates are not supported"
        )


def _validate_slice(recipe: Recipe, index: int, out_slice: OutputSlice) -> None:
    spec = recipe.method
    where = f"{recipe.source or 'recipe'}: slices[{index}]"
    base_ref = out_slice.base_model or recipe.base_model
    base, inputs = recipe.slice_inputs(out_slice)
    if spec.base_use == BaseUse.REQUIRED and not base_ref:
        raise RecipeError(f"{where}: merge_method {spec.name!r} needs a base_model")
    if spec.base_use != BaseUse.INPUT and base_ref and base is None:
        raise RecipeError(f"{where}: the base model {base_ref} must be one of the slice's sources, as in mergekit")
    _check_count(spec, [s.model for s in inputs], where, "the slice")
    scopes = [("parameters", recipe.parameters), ("slice parameters", out_slice.parameters)]
    scopes += [(f"source {s.model}", s.parameters) for s in out_slice.sources]
    _check_parameters(spec, scopes, where)
    _check_required(
        spec,
        [(s.model, [s.parameters, out_slice.parameters, recipe.parameters]) for s in inputs],
        {**recipe.parameters, **out_slice.parameters},
        where,
    )


def _check_count(spec: MethodSpec, names: list[str], where: str, what: str) -> None:
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: a model is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    count = len(names)
    if count < spec.min_models or (spec.max_models is not None and count > spec.max_models):
        wanted = (
            f"exactly {spec.min_models}"
            if spec.max_models == spec.min_models
            else (
                f"at least {spec.min_models}" if spec.max_models is None else f"{spec.min_models} to {spec.max_models}"
            )
        )
        besides = "" if spec.base_use == BaseUse.INPUT else " besides the base"
        raise RecipeError(f"{where}: merge_method {spec.name!r} takes {wanted} model(s){besides}; {what} gives {count}")


def _check_parameters(spec: MethodSpec, scopes: list[tuple[str, dict]], where: str) -> None:
    known = {p.name: p for p in spec.params}
    for label, params in scopes:
        for name, setting in params.items():
            if name not in known:
                log.warning(
                    "%s: %s: parameter %r is not used by %s (mergekit ignores it too)", where, label, name, spec.name
                )
                continue
            if label.startswith(("model ", "source ")) and known[name].scope == Scope.GLOBAL:
                log.warning("%s: %s: %r is a global parameter; set it under top-level 'parameters'", where, label, name)
            check_setting(setting, known[name].kind, f"{where}: {label}: parameter {name!r}")


def _check_required(spec: MethodSpec, inputs: list[tuple[str, list[dict]]], shared: dict, where: str) -> None:
    """RecipeError for a required parameter that no scope of some input (or no shared scope) sets."""
    for p in spec.params:
        if not p.required:
            continue
        if p.scope == Scope.GLOBAL:
            if p.name not in shared:
                raise RecipeError(f"{where}: merge_method {spec.name!r} needs parameter {p.name!r} under 'parameters'")
            continue
        for model, scopes in inputs:
            if not any(p.name in scope for scope in scopes):
                raise RecipeError(
                    f"{where}: model {model}: missing required parameter {p.name!r} "
                    "(set it under the model's parameters or in the top-level parameters)"
                )


def loads(text: str, source: str | None = None) -> Recipe:
    """Parse recipe YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source or 'recipe'}: not valid YAML ({err})") from None
    return from_dict(data, source)


def load(path: str | Path) -> Recipe:
    """Read a recipe file (mergekit YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe ({err.strerror})") from None
    return loads(text, str(path))


def _canonical(value: Any) -> Any:
    # 1 and 1.0 mean the same weight; dict key order means nothing.
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    return str(value)


def content_hash(recipe: Recipe, fingerprint: Callable[[str], str] | None = None, seed: int = 0) -> str:
    """Cache key of a merge: the recipe in canonical form with each model replaced by its weights'
    fingerprint (so renaming a folder keeps the key, and retraining one changes it), the seed for
    random-dropping methods, and a code-version salt."""
    if fingerprint is None:
        from engine.checkpoints import fingerprint
    prints = {ref: fingerprint(ref) for ref in recipe.referenced_models()}
    data = recipe.to_dict()
    data["base_model"] = prints.get(recipe.base_model)
    for entry in data.get("models", []):
        entry["model"] = prints[entry["model"]]
    for out_slice in data.get("slices", []):
        for entry in out_slice["sources"]:
            entry["model"] = prints[entry["model"]]
        if "base_model" in out_slice:
            out_slice["base_model"] = prints[out_slice["base_model"]]
    if recipe.tokenizer_source in prints:
        data["tokenizer_source"] = prints[recipe.tokenizer_source]
    data["seed"] = seed if recipe.method.random else None
    data["salt"] = HASH_SALT
    payload = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


# Below this summed weight the merge treats the divisor as zero (engine.merge.generalized), so
# weights that small do not cancel.
_SMALLEST_CANCELLING_WEIGHT = 1e-6


def without_inert_weights(recipe: Recipe) -> Recipe:
    """The recipe with weights that cannot change the merge set to 1.0; any other recipe unchanged.

    A task-vector method with normalize on divides the weighted sum of task vectors by the summed
    weights (of the entries kept by TIES's sign consensus, whose elected sign a common positive
    factor does not change), so equal positive scalar weights on every merged model cancel: such
    recipes give the same model up to float rounding (TIES, Yadav et al. 2023; mergekit's
    generalised task arithmetic, Goddard et al. 2024). content_hash of the result identifies the
    merge itself, as a sweep uses it to merge and score each distinct model once.
    """
    spec = recipe.method
    normalize = spec.param("normalize")
    weight = spec.param("weight")
    if spec.base_use != BaseUse.REQUIRED or normalize is None or weight is None:
        return recipe
    if recipe.parameters.get("normalize", normalize.default) is not True:
        return recipe
    _, merged = recipe.merge_inputs()
    weights = [m.parameters.get("weight", recipe.parameters.get("weight", weight.default)) for m in merged]
    scalar = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    if not merged or not scalar or len({float(w) for w in weights}) != 1:
        return recipe
    if float(weights[0]) < _SMALLEST_CANCELLING_WEIGHT:
        return recipe
    out = copy.deepcopy(recipe)
    for entry in out.models:
        if "weight" in entry.parameters:
            entry.parameters["weight"] = 1.0
    if "weight" in out.parameters:
        out.parameters["weight"] = 1.0
    return out
