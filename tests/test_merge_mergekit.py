"""Our merges against mergekit 0.1.5 on the same YAML, on tiny Qwen2 and Llama checkpoints.

Deterministic methods: every tensor within 1e-5 relative error (max |ours − theirs| / max |theirs|).
Random-dropping methods: equal at density 1, and matching in distribution below it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, RecipeError
from engine.merge import iter_merged, merge_into_model, plan_merge, save_merge
from engine.recipe import from_dict, loads
from engine.settings import get_settings
from tests.tiny_models import save_checkpoint

FAMILIES = ["qwen2", "llama"]
REL_TOL = 1e-5


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """base + three fine-tune-like experts per family (task vectors of scale 0.02)."""
    root = tmp_path_factory.mktemp("merge_zoo")
    for family in FAMILIES:
        base_path = save_checkpoint(root / family / "base", family=family, seed=0)
        base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
        for i in (1, 2, 3):
            save_checkpoint(root / family / f"e{i}", family=family, base=base, delta_scale=0.02, seed=i)
    return root


@pytest.fixture
def zoo(zoo_dir, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(zoo_dir))
    get_settings.cache_clear()
    return zoo_dir


def _models(family_dir: Path, specs):
    return [{"model": str(family_dir / name), **({"parameters": p} if p else {})} for name, p in specs]


def _config(family_dir: Path, case: str) -> dict:
    """The recipe of each case (base = `base`, experts e1..e3)."""
    b = str(family_dir / "base")
    c = {
        "linear": dict(
            merge_method="linear",
            models=_models(
                family_dir, [("e1", {"weight": 0.5}), ("e2", {"weight": [0.2, 1.0]}), ("base", {"weight": 0.3})]
            ),
        ),
        "linear_filters_unnormalized": dict(
            merge_method="linear",
            parameters={"normalize": False},
            models=_models(
                family_dir,
                [("e1", {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.2}]}), ("e2", {"weight": 0.4})],
            ),
        ),
        "task_arithmetic": dict(
            merge_method="task_arithmetic",
            base_model=b,
            parameters={"lambda": 0.8},
            models=_models(
                family_dir, [("e1", {"weight": [0.1, 0.9, 0.4]}), ("e2", {"weight": 0.5}), ("e3", {"weight": -0.3})]
            ),
        ),
        "ties": dict(
            merge_method="ties",
            base_model=b,
            parameters={"int8_mask": True},
            models=_models(
                family_dir,
                [
                    ("e1", {"weight": [0.2, 1.0], "density": 0.5}),
                    ("e2", {"weight": 0.6, "density": 0.3}),
                    ("e3", {"weight": 1.0, "density": 0.8}),
                ],
            ),
        ),
        "ties_global_filters_rescale": dict(
            merge_method="ties",
            base_model=b,
            parameters={
                "density": [{"filter": "mlp", "value": 0.3}, {"value": [0.9, 0.4]}],
                "weight": 0.5,
                "normalize": False,
                "rescale": True,
            },
            models=_models(family_dir, [("e1", None), ("e2", {"weight": 0.9}), ("e3", None)]),
        ),
        "breadcrumbs": dict(
            merge_method="breadcrumbs",
            base_model=b,
            parameters={"weight": 0.5},
            models=_models(family_dir, [("e1", {"density": 0.8, "gamma": 0.05}), ("e2", {"density": 0.6})]),
        ),
        "breadcrumbs_ties": dict(
            merge_method="breadcrumbs_ties",
            base_model=b,
            parameters={"weight": 0.4, "density": 0.6, "gamma": 0.02},
            models=_models(family_dir, [("e1", None), ("e2", None), ("e3", None)]),
        ),
        "sce": dict(
            merge_method="sce",
            base_model=b,
            parameters={"select_topk": 0.4},
            models=_models(family_dir, [("e1", None), ("e2", None), ("e3", None)]),
        ),
        "slerp_schedule": dict(
            merge_method="slerp",
            base_model=b,
            parameters={"t": [0.0, 0.5, 1.0]},
            models=_models(family_dir, [("e1", None)]),
        ),
        "slerp_filters": dict(
            merge_method="slerp",
            base_model=b,
            parameters={"t": [{"filter": "self_attn", "value": 0.3}, {"value": 0.8}]},
            models=_models(family_dir, [("base", None), ("e2", None)]),
        ),
        "model_stock": dict(
            merge_method="model_stock",
            base_model=b,
            models=_models(family_dir, [("e1", None), ("e2", None), ("e3", None)]),
        ),
        "model_stock_filter_wise": dict(
            merge_method="model_stock",
            base_model=b,
            parameters={"filter_wise": True},
            models=_models(family_dir, [("e1", None), ("e2", None)]),
        ),
        "nuslerp_base": dict(
            merge_method="nuslerp",
            base_model=b,
            models=_models(family_dir, [("e1", {"weight": 0.3}), ("e2", {"weight": 0.7})]),
        ),
        "nuslerp_rows": dict(
            merge_method="nuslerp",
            parameters={"nuslerp_row_wise": True, "nuslerp_flatten": False},
            models=_models(family_dir, [("e1", {"weight": 1.0}), ("e3", {"weight": 0.5})]),
        ),
        "multislerp_base": dict(
            merge_method="multislerp",
            base_model=b,
            models=_models(
                family_dir, [("e1", {"weight": 0.5}), ("e2", {"weight": [0.2, 1.0]}), ("e3", {"weight": 0.3})]
            ),
        ),
        "multislerp_raw_weights": dict(
            merge_method="multislerp",
            parameters={"normalize_weights": False},
            models=_models(family_dir, [("e1", {"weight": 0.4}), ("e2", {"weight": 0.5})]),
        ),
        "karcher": dict(
            merge_method="karcher",
            base_model=b,
            parameters={"max_iter": 20, "tol": 1e-6},
            models=_models(family_dir, [("e1", None), ("e2", None)]),
        ),
        "nearswap": dict(
            merge_method="nearswap",
            base_model=b,
            parameters={"t": [{"filter": "mlp", "value": 0.01}, {"value": [0.005, 0.05]}]},
            models=_models(family_dir, [("e1", None)]),
        ),
        "arcee_fusion": dict(
            merge_method="arcee_fusion",
            base_model=b,
            models=_models(family_dir, [("e2", None)]),
        ),
        "passthrough_scale": dict(
            merge_method="passthrough",
            models=_models(family_dir, [("e3", {"scale": [{"filter": "mlp", "value": 0.5}, {"value": [1.0, 2.0]}]})]),
        ),
        "ram": dict(
            merge_method="ram",
            base_model=b,
            parameters={"epsilon": 0.01},
            models=_models(family_dir, [("e1", None), ("e2", None), ("e3", None)]),
        ),
        "ramplus_tl": dict(
            merge_method="ramplus_tl",
            base_model=b,
            parameters={"epsilon": 0.015, "r": [0.5, 2.0], "alpha": 0.6},
            models=_models(family_dir, [("e1", None), ("e2", None), ("e3", None)]),
        ),
    }
    for name in ("dare_linear", "dare_ties", "della", "della_linear"):
        c[f"{name}_density1"] = dict(
            merge_method=name,
            base_model=b,
            parameters={"density": 1.0},
            models=_models(
                family_dir, [("e1", {"weight": 0.7}), ("e2", {"weight": 0.4}), ("e3", {"weight": [0.1, 0.6]})]
            ),
        )
    cfg = c[case]
    cfg["dtype"] = "float32"
    return cfg


def _mergekit(cfg: dict, out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(cfg), str(out), MergeOptions(quiet=True, random_seed=0))
    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _ours(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(iter_merged(plan_merge(from_dict(cfg), seed), "cpu"))


def _rel_errors(ours: dict, theirs: dict) -> dict[str, float]:
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    return {
        k: float((ours[k].double() - theirs[k].double()).abs().max() / theirs[k].double().abs().max().clamp(min=1e-30))
        for k in theirs
    }


CASES = [
    "linear",
    "linear_filters_unnormalized",
    "task_arithmetic",
    "ties",
    "ties_global_filters_rescale",
    "breadcrumbs",
    "breadcrumbs_ties",
    "sce",
    "slerp_schedule",
    "slerp_filters",
    "model_stock",
    "model_stock_filter_wise",
    "nuslerp_base",
    "nuslerp_rows",
    "dare_linear_density1",
    "dare_ties_density1",
    "della_density1",
    "della_linear_density1",
    "multislerp_base",
    "multislerp_raw_weights",
    "karcher",
    "nearswap",
    "arcee_fusion",
    "passthrough_scale",
    "ram",
    "ramplus_tl",
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CASES)
def test_equal_to_mergekit(zoo, tmp_path, family, case):
    cfg = _config(zoo / family, case)
    theirs = _mergekit(cfg, tmp_path / "mergekit")
    ours = _ours(cfg)
    errors = _rel_errors(ours, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= REL_TOL, f"{case}/{family}: {worst} differs by {errors[worst]:.2e}"
    # The merge must actually move away from the base, or equality proves little.
    base = load_file(zoo / family / "base" / "model.safetensors")
    assert any(not torch.equal(ours[k], base[k]) for k in base)


def _delta_stats(merged: dict, base: dict) -> tuple[float, float]:
    """(fraction of entries changed from the base, mean |merged − base|) over every tensor."""
    changed = sum(int(((merged[k] - base[k]).abs() > 0).sum()) for k in base)
    total = sum(base[k].numel() for k in base)
    l1 = sum(float((merged[k] - base[k]).abs().double().sum()) for k in base)
    return changed / total, l1 / total


@pytest.mark.parametrize(
    "method,density,extra",
    [
        ("dare_linear", 0.3, {}),
        ("dare_ties", 0.5, {}),
        ("della_linear", 0.5, {"epsilon": 0.2}),
        ("della", 0.4, {"epsilon": 0.1}),
    ],
)
def test_random_dropping_matches_mergekit_in_distribution(zoo, tmp_path, method, density, extra):
    family_dir = zoo / "qwen2"
    cfg = dict(
        merge_method=method,
        base_model=str(family_dir / "base"),
        dtype="float32",
        parameters={"density": density, "weight": 1.0, **extra},
        models=_models(family_dir, [("e1", None)] if method.endswith("linear") else [("e1", None), ("e2", None)]),
    )
    base = load_file(family_dir / "base" / "model.safetensors")
    theirs = _delta_stats(_mergekit(cfg, tmp_path / "mk"), base)
    ours = _delta_stats(_ours(cfg, seed=1), base)
    assert ours[0] == pytest.approx(theirs[0], abs=0.01)  # fraction of entries kept
    assert ours[1] == pytest.approx(theirs[1], rel=0.03)  # size of the rescaled task vector
    if method.endswith("linear"):
        assert ours[0] == pytest.approx(density, abs=0.01)
    # Reproducible from the seed, different across seeds.
    again, other = _ours(cfg, seed=1), _ours(cfg, seed=2)
    ours_again = _ours(cfg, seed=1)
    assert all(torch.equal(again[k], ours_again[k]) for k in again)
    assert any(not torch.equal(again[k], other[k]) for k in again)


def test_our_yaml_runs_in_mergekit_cli_and_our_checkpoint_matches(zoo, tmp_path):
    cfg = _config(zoo / "llama", "ties")
    recipe = from_dict(cfg)
    recipe_file = tmp_path / "recipe.yaml"
    recipe.save(recipe_file)
    cli = Path(sys.executable).with_name("mergekit-yaml")
    subprocess.run(
        [str(cli), str(recipe_file), str(tmp_path / "mk"), "--quiet"], check=True, capture_output=True, timeout=240
    )
    out = save_merge(recipe, tmp_path / "ours", device="cpu")
    theirs = load_file(tmp_path / "mk" / "model.safetensors")
    ours = load_file(out / "model.safetensors")
    errors = _rel_errors(ours, theirs)
    assert max(errors.values()) <= REL_TOL
    assert (out / "mergekit_config.yml").read_text() == recipe.to_yaml()
    shutil.rmtree(tmp_path / "mk")


def _slice_configs(family_dir: Path) -> dict[str, dict]:
    """Recipes in mergekit's slices: syntax (the tiny models have 4 layers)."""

    def src(name, start, stop, **params):
        return {
            "model": str(family_dir / name),
            "layer_range": [start, stop],
            **({"parameters": params} if params else {}),
        }

    b = str(family_dir / "base")
    return {
        # A frankenmerge: 3 layers of e1, then 3 of e2 overlapping them; 6 layers out.
        "passthrough_stack": dict(
            merge_method="passthrough",
            slices=[
                {"sources": [src("e1", 0, 3)]},
                {"sources": [src("e2", 1, 4, scale=[{"filter": "mlp", "value": 0.5}, {"value": 1.0}])]},
            ],
        ),
        # Layers merged across different depths, with a schedule over each slice.
        "linear_offset": dict(
            merge_method="linear",
            parameters={"weight": 1.0},
            slices=[
                {"sources": [src("e1", 0, 2), src("e2", 2, 4, weight=[0.2, 0.8])]},
                {
                    # Per-model filters match the name in that model: e3's layer 3 is output layer 4.
                    "sources": [src("e3", 1, 4, weight=[{"filter": "layers.3.", "value": 2.0}]), src("e1", 0, 3)],
                    "parameters": {"normalize": False, "weight": 0.5},
                },
            ],
        ),
        # Per-slice parameters and per-slice base: slerp needs the base among each slice's sources.
        "slerp_slices": dict(
            merge_method="slerp",
            base_model=b,
            parameters={"t": 0.5},
            slices=[
                {"sources": [src("base", 0, 2), src("e1", 0, 2)], "parameters": {"t": [0.1, 0.9]}},
                {"sources": [src("e2", 2, 4), src("e3", 2, 4)], "base_model": str(family_dir / "e2")},
                {"sources": [src("base", 3, 4), src("e3", 0, 1)]},
            ],
        ),
        "ties_slices": dict(
            merge_method="ties",
            base_model=b,
            parameters={"density": 0.5, "weight": 0.7},
            slices=[
                {
                    "sources": [src("base", 0, 4), src("e1", 0, 4, density=[0.2, 0.9]), src("e2", 0, 4)],
                    "parameters": {"weight": [{"filter": "self_attn", "value": 1.2}, {"value": 0.4}]},
                },
                {"sources": [src("base", 2, 4), src("e3", 2, 4, weight=1.0)]},
            ],
        ),
    }


@pytest.mark.parametrize("case", ["passthrough_stack", "linear_offset", "slerp_slices", "ties_slices"])
def test_slices_equal_to_mergekit(zoo, tmp_path, case):
    # Llama: mergekit 0.1.5 leaves Qwen2's layer_types at the input's length, and transformers
    # then refuses to save its config (after the tensors are written).
    cfg = {**_slice_configs(zoo / "llama")[case], "dtype": "float32"}
    theirs = _mergekit(cfg, tmp_path / "mergekit")
    plan = plan_merge(from_dict(cfg))
    ours = dict(iter_merged(plan, "cpu"))
    errors = _rel_errors(ours, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= REL_TOL, f"{case}: {worst} differs by {errors[worst]:.2e}"
    stacked = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in cfg["slices"])
    assert plan.config["num_hidden_layers"] == stacked
    assert {k for k in ours if ".layers." in k} == {
        k for i in range(stacked) for k in theirs if k.startswith(f"model.layers.{i}.")
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_frankenmerge_folder_loads_in_transformers_and_runs(zoo, tmp_path, family):
    family_dir = zoo / family
    recipe = from_dict({**_slice_configs(family_dir)["passthrough_stack"], "dtype": "float32"})
    out = save_merge(recipe, tmp_path / "stacked", device="cpu")
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    e1 = transformers.AutoModelForCausalLM.from_pretrained(family_dir / "e1")
    e2 = transformers.AutoModelForCausalLM.from_pretrained(family_dir / "e2")
    assert model.config.num_hidden_layers == 6
    if family == "qwen2":  # per-layer attention types follow the layers they come from
        assert model.config.layer_types == [e1.config.layer_types[i] for i in (0, 1, 2)] + [
            e2.config.layer_types[i] for i in (1, 2, 3)
        ]
    # Output layer 4 is e2's layer 2 with its MLP halved; layer 1 is e1's layer 1 untouched.
    torch.testing.assert_close(model.model.layers[4].mlp.up_proj.weight, 0.5 * e2.model.layers[2].mlp.up_proj.weight)
    torch.testing.assert_close(
        model.model.layers[4].self_attn.q_proj.weight, e2.model.layers[2].self_attn.q_proj.weight
    )
    torch.testing.assert_close(
        model.model.layers[1].self_attn.q_proj.weight, e1.model.layers[1].self_attn.q_proj.weight
    )
    torch.testing.assert_close(model.lm_head.weight, e2.lm_head.weight)  # after the blocks: the last slice's model
    torch.testing.assert_close(model.model.embed_tokens.weight, e1.model.embed_tokens.weight)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 11]])).logits
    assert logits.shape == (1, 4, model.config.vocab_size) and torch.isfinite(logits).all()
    assert loads((out / "mergekit_config.yml").read_text()) == recipe


def test_slices_merge_into_a_live_model_as_into_a_folder(zoo, tmp_path):
    recipe = from_dict({**_slice_configs(zoo / "qwen2")["ties_slices"], "dtype": "float32"})
    model, _ = merge_into_model(recipe, device="cpu")
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    written = dict(iter_merged(plan_merge(recipe), "cpu"))
    live = model.state_dict()
    assert set(written) <= set(live)
    for name, tensor in written.items():
        assert torch.equal(live[name], tensor), name


def test_slices_past_a_models_layers_are_refused_by_name(zoo):
    cfg = _slice_configs(zoo / "qwen2")["passthrough_stack"]
    cfg["slices"][1]["sources"][0]["layer_range"] = [2, 5]
    with pytest.raises(CheckpointError, match=r"slices\[1\]: layer_range \[2, 5\] runs past the 4 layers of .*e2"):
        plan_merge(from_dict(cfg))


def test_multislerp_names_the_tensor_whose_directions_cancel(zoo):
    """Task vectors d, −d and 0 (on a zero base, so exactly) with equal weights have no spherical
    mean; the error says which tensor."""
    family_dir = zoo / "llama"
    delta = load_file(family_dir / "e1" / "model.safetensors")
    for name, sign in (("base", 0.0), ("plus", 1.0), ("minus", -1.0), ("zero", 0.0)):
        folder = family_dir / f"cancel-{name}"
        if not folder.exists():
            shutil.copytree(family_dir / "base", folder)
            save_file({k: sign * v for k, v in delta.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = dict(
        merge_method="multislerp",
        base_model=str(family_dir / "cancel-base"),
        models=_models(family_dir, [("cancel-plus", None), ("cancel-minus", None), ("cancel-zero", None)]),
        parameters={"weight": 1.0},
    )
    with pytest.raises(RecipeError, match=r"cancel.yaml: tensor '[^']+': multislerp: the weighted mean of the inputs"):
        dict(iter_merged(plan_merge(from_dict(cfg, source="cancel.yaml")), "cpu"))
