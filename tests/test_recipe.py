"""Recipes: mergekit YAML in and out, validation messages, parameter lookup, content hash."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import RecipeError
from engine.merge.params import evaluate, layer_position
from engine.recipe import content_hash, from_dict, load, loads

BASE = """
merge_method: ties
base_model: /m/base
models:
  - model: /m/a
    parameters: {weight: [0.1, 0.5, 1.0], density: 0.5}
  - model: /m/b
    parameters:
      weight: [{filter: mlp, value: 0.3}, {value: 1}]
parameters: {normalize: true, density: 0.7}
dtype: bfloat16
"""

numbers = st.floats(-3, 3, allow_nan=False).map(lambda x: round(x, 4))
settings_st = st.one_of(
    numbers,
    st.lists(numbers, min_size=1, max_size=5),
    st.lists(
        st.fixed_dictionaries({"value": numbers}, optional={"filter": st.sampled_from(["mlp", "self_attn", "*"])}),
        min_size=1,
        max_size=3,
    ),
)


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(settings_st, min_size=2, max_size=2), density=settings_st, lam=numbers)
def test_yaml_round_trips_here_and_through_mergekit(weights, density, lam):
    from mergekit.config import MergeConfiguration

    data = {
        "merge_method": "dare_ties",
        "base_model": "/m/base",
        "parameters": {"density": density, "lambda": lam},
        "models": [{"model": f"/m/{i}", "parameters": {"weight": w}} for i, w in enumerate(weights)],
        "dtype": "float32",
    }
    recipe = from_dict(data)
    assert loads(recipe.to_yaml()) == recipe
    # mergekit reads our YAML, and what it writes back reads as the same recipe.
    theirs = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_yaml()))
    assert loads(theirs.to_yaml()) == recipe


def test_file_load_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    recipe = load(path)
    assert recipe.source == str(path) and recipe.base_model == "/m/base"
    path.write_text(BASE.replace("ties", "tiez"))
    with pytest.raises(RecipeError, match=rf"{path}: unknown merge_method 'tiez'"):
        load(path)
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load(tmp_path / "missing.yaml")


def test_slices_round_trip_here_and_through_mergekit():
    from mergekit.config import MergeConfiguration

    text = """
merge_method: slerp
base_model: /m/base
parameters: {t: 0.5}
slices:
  - sources:
    - {model: /m/base, layer_range: [0, 4]}
    - {model: /m/a, layer_range: [0, 4]}
    parameters:
      t: [{filter: mlp, value: 0.2}, {value: [0.1, 0.9]}]
  - sources:
    - {model: /m/b, layer_range: [2, 4], parameters: {t: 0.7}}
    - {model: /m/c, layer_range: [4, 6]}
    base_model: /m/b
dtype: float32
"""
    recipe = loads(text)
    assert [s.num_layers for s in recipe.slices] == [4, 2]
    assert recipe.slices[1].sources[0].layer_range == (2, 4)
    assert recipe.referenced_models() == ["/m/base", "/m/a", "/m/b", "/m/c"]
    assert loads(recipe.to_yaml()) == recipe
    theirs = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_yaml()))
    assert loads(theirs.to_yaml()) == recipe
    assert [s.sources[1].layer_range for s in theirs.slices] == [(0, 4), (4, 6)]


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


SLICES = """merge_method: passthrough
slices:
  - sources:
    - {model: /m/a, layer_range: [0, 2]}
  - sources:
    - {model: /m/b, layer_range: [1, 3]}
"""

INVALID = [
    ("unknown method", _edit(BASE, "merge_method: ties", "merge_method: average"), "unknown merge_method 'average'"),
    (
        "missing weight",
        _edit(BASE, "weight: [0.1, 0.5, 1.0], ", ""),
        r"model /m/a: missing required parameter 'weight'",
    ),
    ("empty schedule", _edit(BASE, "[0.1, 0.5, 1.0]", "[]"), r"model /m/a: parameter 'weight': empty schedule"),
    ("nested schedule", _edit(BASE, "[0.1, 0.5, 1.0]", "[[0.1], 0.5]"), "flat list"),
    ("text in schedule", _edit(BASE, "[0.1, 0.5, 1.0]", "[0.1, high]"), "expected a number, got 'high'"),
    ("bad filter", _edit(BASE, "filter: mlp", "filter: 3"), "filter must be a tensor-name substring"),
    ("condition without value", _edit(BASE, "{filter: mlp, value: 0.3}", "{filter: mlp}"), "needs 'value'"),
    ("bool as number", _edit(BASE, "density: 0.5", "density: true"), "parameter 'density': expected a number"),
    ("number as switch", _edit(BASE, "normalize: true", "normalize: 0.5"), "expected true or false"),
    ("no base", _edit(BASE, "base_model: /m/base\n", ""), "'ties' needs a base_model"),
    ("modules", "merge_method: ties\nmodules: {}\n", "'modules' is not supported"),
    ("empty slices", "merge_method: passthrough\nslices: []\n", "'slices' must be a non-empty list"),
    ("models and slices", SLICES + "models:\n - model: /m/a\n", "exactly one of 'models'"),
    (
        "bad layer range",
        _edit(SLICES, "[0, 2]", "[2, 1]"),
        r"slices\[0\].sources\[0\].layer_range: expected \[start, stop\]",
    ),
    (
        "uneven slice",
        _edit(SLICES, "[1, 3]}\n", "[1, 3]}\n    - {model: /m/a, layer_range: [0, 3]}\n"),
        r"slices\[1\]: every source must span the same number",
    ),
    (
        "two inputs to passthrough",
        _edit(
            SLICES,
            "  - sources:\n",
            "  - sources:\n    - {model: /m/b, layer_range: [0, 2]}\n",
        ),
        r"slices\[0\]: merge_method 'passthrough' takes exactly 1",
    ),
    ("residual weight", SLICES + "    residual_weight: 0.5\n", "residual_weight is not supported"),
    (
        "slice base not a source",
        "merge_method: ties\nbase_model: /m/b\nslices:\n  - sources:\n    - {model: /m/a, layer_range: [0, 2], parameters: {weight: 1, density: 0.5}}\n",
        r"slices\[0\]: the base model /m/b must be one of the slice's sources",
    ),
    ("bad dtype", _edit(BASE, "bfloat16", "int8"), "dtype 'int8' is not one of"),
    ("union tokenizer", BASE + "tokenizer_source: union\n", "tokenizer_source 'union' is not supported"),
    ("lora", _edit(BASE, "/m/a", "/m/a+/m/lora"), "LoRA references"),
    ("unknown key", BASE + "merge_mthod: ties\n", "unknown key"),
    ("no models", "merge_method: linear\nmodels: []\n", "'models' must be a non-empty list"),
    ("not yaml", "merge_method: [ties\n", "not valid YAML"),
    ("not a mapping", "- ties\n", "expected a mapping"),
    (
        "slerp with two models",
        "merge_method: slerp\nbase_model: /m/b\nparameters: {t: 0.5}\nmodels:\n - model: /m/x\n - model: /m/y\n",
        "'slerp' takes exactly 1 model",
    ),
    ("slerp without t", "merge_method: slerp\nbase_model: /m/b\nmodels:\n - model: /m/x\n", "needs parameter 't'"),
    (
        "nuslerp with one model",
        "merge_method: nuslerp\nmodels:\n - model: /m/x\n   parameters: {weight: 1}\n",
        "exactly 2 model",
    ),
    ("model twice", _edit(BASE, "/m/b", "/m/a"), "listed twice"),
]


@pytest.mark.parametrize("text,message", [(t, m) for _, t, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_recipes_are_refused_with_the_problem_named(text, message):
    with pytest.raises(RecipeError, match=message) as info:
        loads(text, source="bad.yaml")
    assert str(info.value).startswith("bad.yaml: ")


def test_schedules_interpolate_over_layers_like_numpy():
    values = [0.0, 1.0, 0.25, 0.5]
    for layer in range(7):
        t = layer_position(f"model.layers.{layer}.mlp.up_proj.weight", 7)
        expected = np.interp(t * 3, [0, 1, 2, 3], values)
        assert evaluate(values, "x", t, float, "w") == pytest.approx(expected)
    assert layer_position("model.embed_tokens.weight", 7) == 0.0
    assert layer_position("lm_head.weight", 7) == 0.0
    assert evaluate([True, False], "x", 0.6, bool, "w") is True  # discrete values are picked, not blended
    conds = [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 9}]
    assert evaluate(conds, "model.layers.2.mlp.up_proj.weight", 0.5, float, "w") == 0.5
    assert evaluate(conds, "model.layers.2.self_attn.q_proj.weight", 0.5, float, "w") == 9
    assert evaluate([{"filter": "mlp", "value": 1}], "lm_head.weight", 0, float, "w") is None


def _prints(mapping):
    return lambda ref: mapping[ref]


def test_content_hash_keys_on_weights_not_on_spelling():
    prints = {"/m/base": "B", "/m/a": "A", "/m/b": "C"}
    recipe = loads(BASE)
    key = content_hash(recipe, _prints(prints))
    respelled = loads(BASE.replace("density: 0.7}", "density: 0.70}").replace("{value: 1}", "{value: 1.0}"))
    assert content_hash(respelled, _prints(prints)) == key
    moved = loads(BASE.replace("/m/a", "/other/a"))
    assert content_hash(moved, _prints({**prints, "/other/a": "A"})) == key  # renamed folder, same weights
    assert content_hash(recipe, _prints({**prints, "/m/a": "A2"})) != key  # retrained expert
    assert content_hash(loads(BASE.replace("density: 0.5", "density: 0.6")), _prints(prints)) != key
    assert content_hash(recipe, _prints(prints), seed=1) == key  # ties does not use the seed
    dare = loads(BASE.replace("merge_method: ties", "merge_method: dare_ties"))
    assert content_hash(dare, _prints(prints), seed=1) != content_hash(dare, _prints(prints), seed=2)


def test_content_hash_uses_checkpoint_fingerprints(model_root):
    from tests.tiny_models import save_checkpoint

    a = save_checkpoint(model_root / "a", seed=1)
    b = save_checkpoint(model_root / "b", seed=2)
    text = f"merge_method: linear\nmodels:\n - model: {a}\n   parameters: {{weight: 1}}\n - model: {b}\n   parameters: {{weight: 1}}\n"
    key = content_hash(loads(text))
    shutil.copytree(a, model_root / "a_copy")
    assert content_hash(loads(text.replace(str(a), str(model_root / "a_copy")))) == key
    other = save_checkpoint(model_root / "c", seed=3)
    assert content_hash(loads(text.replace(str(b), str(other)))) != key  # different weights, different key


def _ties(weights, normalize=True, method="ties", **shared):
    return from_dict(
        {
            "merge_method": method,
            "base_model": "b",
            "models": [{"model": m, "parameters": {"weight": w, "density": 0.5}} for m, w in zip("xyz", weights)],
            "parameters": {"normalize": normalize, **shared},
        }
    )


@pytest.mark.parametrize(
    "a, b, same",
    [
        (_ties([0.5, 0.5, 0.5]), _ties([2.5, 2.5, 2.5]), True),  # normalize on, equal weights: they cancel
        (_ties([0.5, 0.5, 0.5], method="dare_linear"), _ties([0.9, 0.9, 0.9], method="dare_linear"), True),
        (_ties([0.5, 0.5, 0.5], normalize=False), _ties([2.5, 2.5, 2.5], normalize=False), False),
        (_ties([0.5, 0.5, 1.0]), _ties([1.0, 1.0, 2.0]), False),  # unequal weights: not handled, kept apart
        (_ties([0.5, 0.5, 0.5], **{"lambda": 0.5}), _ties([2.5, 2.5, 2.5]), False),  # lambda scales after
        (_ties([0.5, 0.5, 0.5]), _ties([-0.5, -0.5, -0.5]), False),  # negative weights flip TIES's elected sign
    ],
)
def test_weights_that_normalisation_cancels_are_set_aside(a, b, same):
    from engine.recipe import without_inert_weights

    def key(r):
        return content_hash(without_inert_weights(r), fingerprint=lambda ref: ref)

    assert (key(a) == key(b)) is same
    assert content_hash(a, fingerprint=lambda ref: ref) != content_hash(b, fingerprint=lambda ref: ref)
