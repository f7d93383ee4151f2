"""Merge recipes in mergekit's YAML: read, validate, write back, and hash for the cache.

Supported keys: merge_method, base_model, models (each `model` with optional `parameters`),
parameters, dtype, out_dtype, tokenizer_source / tokenizer.source ("base" or a referenced
model; every input must share one vocabulary), chat_template (a Jinja string or "auto").
Not supported, refused with a RecipeError: slices, modules, LoRA references (`path+lora`),
tokenizer_source "union" and token surgery.
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
class Recipe:
    """A parsed, validated recipe; model references are paths as written."""

    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
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

    def referenced_models(self) -> list[str]:
        seen = [self.base_model] if self.base_model else []
        for m in self.models:
            if m.model not in seen:
                seen.append(m.model)
        return seen

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
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
    if "slices" in data or "modules" in data:
        raise RecipeError(f"{where}: 'slices' and 'modules' are not supported; list whole models under 'models'")
    if unknown := sorted(set(data) - _KEYS):
        raise RecipeError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    if "merge_method" not in data:
        raise RecipeError(f"{where}: missing 'merge_method'")
    try:
        spec = get_method(data["merge_method"])
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise RecipeError(f"{where}: 'models' must be a non-empty list of {{model: PATH, parameters: ...}}")
    models = []
    for i, entry in enumerate(models_raw):
        if not isinstance(entry, dict) or "model" not in entry:
            raise RecipeError(f"{where}: models[{i}] must be a mapping with a 'model' path")
        if extra := set(entry) - {"model", "parameters"}:
            raise RecipeError(f"{where}: models[{i}] has unknown key(s) {sorted(extra)}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{where}: models[{i}].parameters must be a mapping")
        models.append(ModelEntry(_model_ref(entry["model"], f"{where}: models[{i}].model"), dict(params)))
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
        source=source,
    )
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Structure checks that need no checkpoint: method, base, counts, parameters, dtypes."""
    where = recipe.source or "recipe"
    spec = recipe.method
    if spec.base_use == BaseUse.REQUIRED and not recipe.base_model:
        raise RecipeError(f"{where}: merge_method {spec.name!r} needs a base_model")
    base, inputs = recipe.merge_inputs()
    names = [m.model for m in inputs]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: a model is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    count = len(inputs)
    if count < spec.min_models or (spec.max_models is not None and count > spec.max_models):
        wanted = (
            f"exactly {spec.min_models}"
            if spec.max_models == spec.min_models
            else (
                f"at least {spec.min_models}" if spec.max_models is None else f"{spec.min_models} to {spec.max_models}"
            )
        )
        besides = "" if spec.base_use == BaseUse.INPUT else " besides the base"
        raise RecipeError(
            f"{where}: merge_method {spec.name!r} takes {wanted} model(s){besides}; the recipe gives {count}"
        )
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

    known = {p.name: p for p in spec.params}
    scopes = [("parameters", recipe.parameters)] + [(f"model {m.model}", m.parameters) for m in recipe.models]
    for label, params in scopes:
        for name, setting in params.items():
            if name not in known:
                log.warning(
                    "%s: %s: parameter %r is not used by %s (mergekit ignores it too)", where, label, name, spec.name
                )
                continue
            if label != "parameters" and known[name].scope == Scope.GLOBAL:
                log.warning("%s: %s: %r is a global parameter; set it under top-level 'parameters'", where, label, name)
            check_setting(setting, known[name].kind, f"{where}: {label}: parameter {name!r}")
    for p in spec.params:
        if not p.required:
            continue
        if p.scope == Scope.GLOBAL:
            if p.name not in recipe.parameters:
                raise RecipeError(f"{where}: merge_method {spec.name!r} needs parameter {p.name!r} under 'parameters'")
            continue
        for m in inputs:
            if p.name not in m.parameters and p.name not in recipe.parameters:
                raise RecipeError(
                    f"{where}: model {m.model}: missing required parameter {p.name!r} "
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
    for entry in data["models"]:
        entry["model"] = prints[entry["model"]]
    if recipe.tokenizer_source in prints:
        data["tokenizer_source"] = prints[recipe.tokenizer_source]
    data["seed"] = seed if recipe.method.random else None
    data["salt"] = HASH_SALT
    payload = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
