"""LiNeS and layer swapping as recipes: their YAML run by mergekit 0.1.5 gives our tensors, and both
equal a float64 NumPy reference written from the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
import yaml
from safetensors.torch import load_file

from engine.errors import RecipeError
from engine.merge import iter_merged, plan_merge
from engine.merge.params import layer_index
from engine.patch.schedules import layer_swap_recipe, lines_recipe, lines_schedule, swap_weights
from tests.tiny_models import save_checkpoint

LAYERS = 5


@pytest.fixture
def checkpoints(model_root, one_torch_thread):
    base_path = save_checkpoint(model_root / "base", seed=0, num_hidden_layers=LAYERS)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    experts = [
        save_checkpoint(model_root / f"e{i}", base=base, delta_scale=0.05, seed=i, num_hidden_layers=LAYERS)
        for i in (1, 2)
    ]
    return base_path, experts


def _numpy(path) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in load_file(str(path / "model.safetensors")).items()}


def _mergekit(recipe, out) -> dict[str, np.ndarray]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_yaml()))  # what we export, as text
    run_merge(config, str(out), MergeOptions(quiet=True, random_seed=0))
    return _numpy(out)


def _ours(recipe) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in iter_merged(plan_merge(recipe), "cpu")}


def _close(ours: dict, theirs: dict, tol: float = 1e-5) -> None:
    assert set(ours) == set(theirs)
    for name in theirs:
        scale = max(np.abs(theirs[name]).max(), 1e-30)
        assert np.abs(ours[name] - theirs[name]).max() / scale <= tol, name


def test_lines_schedule_grows_linearly_with_depth():
    assert lines_schedule(5, 0.2, 0.8) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lines_schedule(1, 0.3, 0.5) == [0.8]


def test_lines_recipe_equals_mergekit_and_the_formula(checkpoints, tmp_path):
    base_path, experts = checkpoints
    alpha, beta = 0.1, 0.6
    recipe = lines_recipe(str(base_path), [str(e) for e in experts], LAYERS, alpha, beta, dtype="float32")
    ours = _ours(recipe)
    _close(ours, _mergekit(recipe, tmp_path / "mk"))
    base, taus = _numpy(base_path), [_numpy(e) for e in experts]
    for name, merged in ours.items():
        block = layer_index(name)
        lam = alpha if block is None else alpha + beta * block / (LAYERS - 1)  # outside the blocks: position 0
        expected = base[name] + lam * sum(t[name] - base[name] for t in taus)
        np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(("bottom", "top", "transition", "outside"), [(1, 1, 1, "outer"), (2, 1, 0, "inner")])
def test_layer_swap_equals_mergekit_and_takes_the_blocks_it_names(
    checkpoints, tmp_path, bottom, top, transition, outside
):
    _, (outer, inner) = checkpoints
    recipe = layer_swap_recipe(str(outer), str(inner), LAYERS, bottom, top, transition, outside, dtype="float32")
    ours = _ours(recipe)
    _close(ours, _mergekit(recipe, tmp_path / "mk"))
    a, b = _numpy(outer), _numpy(inner)
    for name, merged in ours.items():
        block = layer_index(name)
        if block is None:
            w = 1.0 if outside == "outer" else 0.0
        elif block < bottom or block >= LAYERS - top:
            w = 1.0
        elif block < bottom + transition or block >= LAYERS - top - transition:
            w = 0.5
        else:
            w = 0.0
        np.testing.assert_allclose(merged, w * a[name] + (1 - w) * b[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_layer_swap_refuses_zones_that_do_not_fit():
    assert swap_weights(6, 2, 1, 1) == [1.0, 1.0, 0.5, 0.0, 0.5, 1.0]
    with pytest.raises(RecipeError, match="exceed the model's 5 blocks"):
        swap_weights(5, 2, 2, 1)


def test_schedule_cli_writes_recipes_that_load(checkpoints, tmp_path):
    from engine.__main__ import main
    from engine.recipe import load

    base_path, experts = checkpoints
    out = tmp_path / "lines.yaml"
    argv = ["schedule", "lines", "--base", str(base_path), "--models", *map(str, experts)]
    assert main([*argv, "--alpha", "0.2", "--beta", "0.4", "--out", str(out)]) == 0
    recipe = load(out)
    assert recipe.merge_method == "task_arithmetic"
    expected = [0.2 + 0.4 * layer / (LAYERS - 1) for layer in range(LAYERS)]
    assert all(m.parameters["weight"] == pytest.approx(expected) for m in recipe.models)
    swap = tmp_path / "swap.yaml"
    argv = ["schedule", "swap", "--outer", str(experts[0]), "--inner", str(experts[1]), "--bottom", "3", "--top", "3"]
    assert main([*argv, "--out", str(swap)]) == 2  # 6 swapped blocks of 5: refused with a message
    assert not swap.exists()


def test_the_lines_method_equals_the_lines_recipe_and_mergekit_refuses_it(checkpoints, tmp_path):
    """`merge_method: lines` merges in one step what the schedule's task-arithmetic recipe merges
    (which mergekit runs, above); its own YAML is MergeScope's, and mergekit refuses it."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from engine.recipe import from_dict

    base_path, experts = checkpoints
    alpha, beta = 0.3, 0.5
    method = from_dict(
        {
            "merge_method": "lines",
            "base_model": str(base_path),
            "models": [{"model": str(e)} for e in experts],
            "parameters": {"alpha": alpha, "beta": beta},
            "dtype": "float32",
        }
    )
    schedule = lines_recipe(str(base_path), [str(e) for e in experts], LAYERS, alpha, beta, dtype="float32")
    ours, scheduled = _ours(method), _ours(schedule)
    _close(ours, scheduled, tol=1e-6)
    base, taus = _numpy(base_path), [_numpy(e) for e in experts]
    name = next(n for n in ours if layer_index(n) == LAYERS - 1)
    np.testing.assert_allclose(
        ours[name], base[name] + (alpha + beta) * sum(t[name] - base[name] for t in taus), rtol=1e-5, atol=1e-6
    )
    text = method.to_yaml()
    assert text.startswith("# ") and "Unimplemented merge method lines" in text
    with pytest.raises(RuntimeError, match="Unimplemented merge method lines"):
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "mk"), MergeOptions())
