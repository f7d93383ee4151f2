"""TSV-Merge, Iso-C, Iso-CTS and PCB-Merging against float64 NumPy references written here from
the papers' formulas (in the authors' layouts: TSV's and Iso-CTS's zero-padded rank-r stacks,
PCB's sort-based quantiles), their algebra (one expert, λ = 0, density 1, order of the
experts, rotations), the executor on real checkpoints, and their YAML, which mergekit refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from engine.errors import CheckpointError, RecipeError
from engine.merge import iter_merged, plan_merge
from engine.merge.registry import get_method, methods
from engine.recipe import from_dict, loads
from tests.tiny_models import save_checkpoint

OURS = ("tsv_merge", "iso_c", "iso_cts", "pcb_merge")
MATRIX = "model.layers.3.mlp.down_proj.weight"
SHAPES = [(12, 9), (9, 12), (10, 10), (31, 7)]


def _arrays(shape, n, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    return base, [base + scale * rng.standard_normal(shape) for _ in range(n)]


def _ours(name, base, models, tensor_name=MATRIX, **params):
    spec = get_method(name)
    values = {p.name: params.get(p.name, p.default) for p in spec.params}
    extra = {"tensor_name": tensor_name} if spec.by_tensor_name else {}
    out = spec.merge(torch.from_numpy(base), [torch.from_numpy(m) for m in models], seed=0, **values, **extra)
    assert out.dtype == torch.float64
    return out.numpy()


def _polar(x):
    p, _, qt = np.linalg.svd(x, full_matrices=False)
    return p @ qt


# ----------------------------------------------------------------- references from the papers


def tsv_reference(base, models, lam=1.0):
    """TSV-M in the authors' layout: rank-r stacks with task i's top k = r // T triplets in
    slots i·k … (i+1)·k and zeros elsewhere, both stacks replaced by their polar factors."""
    deltas = [m - base for m in models]
    t, (rows, cols) = len(deltas), base.shape
    r = min(rows, cols)
    k = r // t
    u_stack, s_stack, vt_stack = np.zeros((rows, r)), np.zeros(r), np.zeros((r, cols))
    for i, d in enumerate(deltas):
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        u_stack[:, i * k : (i + 1) * k] = u[:, :k]
        s_stack[i * k : (i + 1) * k] = s[:k]
        vt_stack[i * k : (i + 1) * k] = vt[:k]
    return base + lam * _polar(u_stack) @ np.diag(s_stack) @ _polar(vt_stack)


def iso_c_reference(base, models, lam=1.0):
    u, s, vt = np.linalg.svd(sum(m - base for m in models), full_matrices=False)
    return base + lam * s.mean() * u @ vt


def iso_cts_reference(base, models, lam=1.0, fraction=0.8):
    """Iso-CTS in the authors' layout: task-specific slots first, the common subspace last."""
    deltas = [m - base for m in models]
    t, (rows, cols) = len(deltas), base.shape
    r = min(rows, cols)
    # The authors' rounding, which can ask for more than r directions when the common
    # subspace is small (e.g. r = 7, 2 tasks, fraction 0): capped at r // T per task.
    per_task = min(round((r - int(r * fraction)) / t), r // t)
    common = r - per_task * t
    u, s, vt = np.linalg.svd(sum(deltas), full_matrices=False)
    u_c = u[:, :common]
    u_stack, s_stack, vt_stack = np.zeros((rows, r)), np.zeros(r), np.zeros((r, cols))
    for i, d in enumerate(deltas):
        ut, st, vtt = np.linalg.svd(d - u_c @ u_c.T @ d, full_matrices=False)
        u_stack[:, i * per_task : (i + 1) * per_task] = ut[:, :per_task]
        s_stack[i * per_task : (i + 1) * per_task] = st[:per_task]
        vt_stack[i * per_task : (i + 1) * per_task] = vtt[:per_task]
    u_stack[:, t * per_task :] = u_c
    s_stack[t * per_task :] = s[:common]
    vt_stack[t * per_task :] = vt[:common]
    return base + lam * _polar(u_stack) @ np.diag(np.full(r, s_stack.mean())) @ _polar(vt_stack)


def pcb_reference(base, models, density, lam=1.0):
    """PCB in the authors' steps over the flattened task vectors (n, D), quantiles by sorting."""
    deltas = np.stack([(m - base).reshape(-1) for m in models])
    n, d = deltas.shape

    def clip(x, low_ratio, high_ratio):
        ordered = np.sort(x, axis=1)
        low = ordered[:, int(d * low_ratio)][:, None]
        high = ordered[:, int(d * (1 - high_ratio) - 1)][:, None]
        return np.clip(x, low, high)

    def min_max(x):
        low, high = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
        return (x - low) / (high - low)

    magnitude = clip(np.abs(deltas), 1e-4, 1e-4)
    intra = np.exp(n * min_max(magnitude) ** 2)
    inter = np.tanh(deltas * deltas.sum(axis=0))
    scale = min_max(clip(intra * inter, 1 - density, 0))
    merged = (np.sign(deltas) * magnitude * scale).sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)
    return base + lam * merged.reshape(base.shape)


# ----------------------------------------------------------------- equality with the references


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_svd_methods_equal_their_references(shape, n):
    base, models = _arrays(shape, n, seed=n)
    np.testing.assert_allclose(
        _ours("tsv_merge", base, models, **{"lambda": 0.7}), tsv_reference(base, models, 0.7), atol=1e-10
    )
    np.testing.assert_allclose(
        _ours("iso_c", base, models, **{"lambda": 1.3}), iso_c_reference(base, models, 1.3), atol=1e-10
    )
    for fraction in (0.8, 0.5, 0.0, 1.0):
        ours = _ours("iso_cts", base, models, common_space_fraction=fraction, **{"lambda": 0.9})
        np.testing.assert_allclose(ours, iso_cts_reference(base, models, 0.9, fraction), atol=1e-10)


@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("shape,n", [((17, 13), 3), ((120, 100), 2), ((40, 300), 4), ((50,), 3)])
def test_pcb_equals_its_reference(shape, n, density):
    # 12 000 and 12 000 entries: the 1e-4 outlier clipping of |delta| takes effect.
    base, models = _arrays(shape, n, seed=7)
    models[0] = base + 5 * (models[0] - base)  # one dominant expert: the balancing has something to do
    ours = _ours("pcb_merge", base, models, density=density, **{"lambda": 1.2})
    np.testing.assert_allclose(ours, pcb_reference(base, models, density, 1.2), rtol=1e-10, atol=1e-12)


def test_pcb_keeps_the_density_share_of_each_task():
    base, models = _arrays((60, 50), 1, seed=3)
    ours = _ours("pcb_merge", base, models, density=0.2)
    # One task: its score grows with |delta|, and entries at or below the cut (position
    # int(0.8 D) of the sorted scores) get weight 0: the largest D - int(0.8 D) - 1 stay.
    kept = (ours != base).reshape(-1)
    largest = np.argsort(np.abs(models[0] - base), axis=None)[::-1]
    assert kept.sum() == 3000 - 2400 - 1
    assert kept[largest[:599]].all()


# ----------------------------------------------------------------- algebra


@pytest.mark.parametrize("name", OURS)
def test_lambda_zero_is_the_base(name):
    base, models = _arrays((11, 8), 3)
    np.testing.assert_array_equal(_ours(name, base, models, **{"lambda": 0.0}), base)


@pytest.mark.parametrize("shape", SHAPES)
def test_one_expert(shape):
    base, (x,) = _arrays(shape, 1, seed=2)
    # TSV keeps every triplet of a single task vector: task arithmetic exactly.
    np.testing.assert_allclose(_ours("tsv_merge", base, [x], **{"lambda": 0.6}), base + 0.6 * (x - base), atol=1e-12)
    # Iso-CTS's common and task-specific parts of one task vector are its own singular directions.
    np.testing.assert_allclose(_ours("iso_cts", base, [x]), _ours("iso_c", base, [x]), atol=1e-12)
    # PCB at density 1 keeps every entry but the one at the cut (the lowest score: smallest
    # |delta|), and its outlier clipping (position int(0.9999 D - 1) of the sorted |delta|)
    # brings the largest |delta| down to the next largest.
    pcb = _ours("pcb_merge", base, [x], density=1.0)
    delta = (x - base).reshape(-1)
    order = np.argsort(np.abs(delta))
    expected = delta.copy()
    expected[order[0]] = 0
    expected[order[-1]] = np.sign(delta[order[-1]]) * abs(delta[order[-2]])
    np.testing.assert_allclose(pcb, base + expected.reshape(shape), atol=1e-12)


def test_iso_c_flattens_the_spectrum_of_the_summed_task_vectors():
    base, models = _arrays((14, 10), 3, seed=5)
    summed = sum(m - base for m in models)
    merged_delta = _ours("iso_c", base, models) - base
    np.testing.assert_allclose(
        np.linalg.svd(merged_delta, compute_uv=False), np.full(10, np.linalg.svd(summed, compute_uv=False).mean())
    )
    # Same singular subspaces as the sum: projecting onto them changes nothing.
    u, _, vt = np.linalg.svd(summed, full_matrices=False)
    np.testing.assert_allclose(u @ u.T @ merged_delta @ vt.T @ vt, merged_delta, atol=1e-12)


@pytest.mark.parametrize("name", OURS)
def test_the_order_of_the_experts_does_not_matter(name):
    base, models = _arrays((13, 9), 3, seed=11)
    np.testing.assert_allclose(_ours(name, base, models), _ours(name, base, models[::-1]), atol=1e-12)


@pytest.mark.parametrize("name", ["tsv_merge", "iso_c", "iso_cts"])
def test_svd_methods_commute_with_rotations(name):
    # Only the singular structure of the task vectors matters: rotating them rotates the merge.
    base, models = _arrays((10, 7), 3, seed=4)
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    r, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    rotated = [base + q @ (m - base) @ r for m in models]
    np.testing.assert_allclose(
        _ours(name, base, rotated) - base, q @ (_ours(name, base, models) - base) @ r, atol=1e-12
    )


@pytest.mark.parametrize("name", ["tsv_merge", "iso_c", "iso_cts"])
@pytest.mark.parametrize(
    "shape,tensor_name",
    [
        ((16,), "model.layers.0.input_layernorm.weight"),
        ((16,), "model.layers.0.self_attn.q_proj.bias"),
        ((40, 16), "model.embed_tokens.weight"),
        ((40, 16), "lm_head.weight"),
        ((40, 16), "transformer.wte.weight"),
        ((40, 16), "gpt_neox.embed_in.weight"),
    ],
)
def test_svd_methods_average_what_is_no_block_matrix(name, shape, tensor_name):
    base, models = _arrays(shape, 3, seed=6)
    mean = sum(m - base for m in models) / 3
    np.testing.assert_allclose(_ours(name, base, models, tensor_name, **{"lambda": 0.8}), base + 0.8 * mean, atol=1e-12)


def test_tsv_averages_a_matrix_narrower_than_the_number_of_experts():
    base, models = _arrays((2, 30), 3, seed=8)  # rank 2 < 3 experts: no triplet per task
    np.testing.assert_allclose(_ours("tsv_merge", base, models), base + sum(m - base for m in models) / 3, atol=1e-12)


def test_pcb_leaves_a_tensor_no_expert_changed_at_the_base():
    base, _ = _arrays((6, 5), 0)
    np.testing.assert_array_equal(_ours("pcb_merge", base, [base.copy(), base.copy()]), base)


def test_svd_is_retried_in_float64_when_float32_does_not_converge(monkeypatch):
    real, dtypes = torch.linalg.svd, []

    def float32_fails(x, full_matrices=True):
        dtypes.append(x.dtype)
        if x.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real(x, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", float32_fails)
    base, models = _arrays((12, 9), 3, seed=1)
    base, models = base.astype(np.float32), [m.astype(np.float32) for m in models]
    spec = get_method("iso_cts")
    out = spec.merge(
        torch.from_numpy(base),
        [torch.from_numpy(m) for m in models],
        seed=0,
        tensor_name=MATRIX,
        **{"lambda": 1.0, "common_space_fraction": 0.8},
    )
    assert out.dtype == torch.float32 and torch.float64 in dtypes
    reference = iso_cts_reference(base.astype(np.float64), [m.astype(np.float64) for m in models])
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-5)


def test_an_svd_that_never_converges_names_the_tensor(monkeypatch):
    def never(x, full_matrices=True):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", never)
    base, models = _arrays((12, 9), 2)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.3\.mlp\.down_proj\.weight'.*did not converge"):
        _ours("tsv_merge", base, models)


# ----------------------------------------------------------------- registry, recipes, checkpoints


def test_registry_marks_exactly_the_methods_mergekit_lacks():
    from mergekit.merge_methods.registry import registered_methods

    theirs = {m.spec.name for m in registered_methods()}
    for spec in methods().values():
        assert spec.in_mergekit == (spec.name in theirs), spec.name
    assert {n for n, s in methods().items() if not s.in_mergekit} >= set(OURS)


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("interference")
    base = transformers.AutoModelForCausalLM.from_pretrained(save_checkpoint(root / "base", seed=0))
    for i in (1, 2, 3):
        save_checkpoint(root / f"e{i}", base=base, delta_scale=0.02, seed=i)
    return root


def _recipe(family_dir: Path, method: str, **parameters):
    return from_dict(
        {
            "merge_method": method,
            "base_model": str(family_dir / "base"),
            "models": [{"model": str(family_dir / f"e{i}")} for i in (1, 2, 3)],
            "parameters": parameters,
            "dtype": "float32",
        }
    )


@pytest.mark.parametrize(
    "method,params,reference",
    [
        ("tsv_merge", {"lambda": 0.8}, lambda b, ms: tsv_reference(b, ms, 0.8)),
        ("iso_c", {"lambda": 0.5}, lambda b, ms: iso_c_reference(b, ms, 0.5)),
        ("iso_cts", {"lambda": 0.5, "common_space_fraction": 0.6}, lambda b, ms: iso_cts_reference(b, ms, 0.5, 0.6)),
        ("pcb_merge", {"density": 0.3}, lambda b, ms: pcb_reference(b, ms, 0.3)),
    ],
)
def test_checkpoint_merge_equals_the_reference_tensor_by_tensor(family_dir, monkeypatch, method, params, reference):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(family_dir))
    from engine.settings import get_settings

    get_settings.cache_clear()
    ours = dict(iter_merged(plan_merge(_recipe(family_dir, method, **params)), "cpu"))
    base = {k: v.double().numpy() for k, v in load_file(family_dir / "base" / "model.safetensors").items()}
    experts = [load_file(family_dir / f"e{i}" / "model.safetensors") for i in (1, 2, 3)]
    decomposed = 0
    for name, b in base.items():
        ms = [e[name].double().numpy() for e in experts]
        svd_method = method != "pcb_merge"
        if svd_method and (b.ndim != 2 or "embed" in name or "lm_head" in name):
            expected = base[name] + params["lambda"] * sum(m - b for m in ms) / 3
        else:
            expected = reference(b, ms)
            decomposed += b.ndim == 2
        # float32 SVDs against float64 ones: compared on the merged task vector's scale.
        got, want = ours[name].double().numpy() - b, expected - b
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), err_msg=name)
    assert decomposed >= 7  # the block matrices took the method's own path


@pytest.mark.parametrize("method", OURS)
def test_yaml_round_trips_and_says_mergekit_refuses_it(family_dir, method):
    recipe = _recipe(family_dir, method)
    text = recipe.to_yaml()
    assert loads(text) == recipe
    assert text.startswith(f"# merge_method {method} ") and "mergekit 0.1.5 does not implement it" in text
    assert f'"Unimplemented merge method {method}"' in text


def test_mergekit_refuses_our_methods_yaml_with_a_clear_message(family_dir, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    text = _recipe(family_dir, "iso_cts").to_yaml()
    with pytest.raises(RuntimeError, match="Unimplemented merge method iso_cts"):
        run_merge(
            MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "out"), MergeOptions(quiet=True)
        )
    assert not (tmp_path / "out").exists()


def test_mergekit_methods_yaml_has_no_note(family_dir):
    assert not _recipe(family_dir, "ties", density=0.5, weight=1.0).to_yaml().startswith("#")


@pytest.mark.parametrize(
    "method,params,message",
    [
        ("iso_cts", {"common_space_fraction": 1.5}, "common_space_fraction must lie in"),
        ("pcb_merge", {"density": 0.0}, "density must lie in"),
    ],
)
def test_bad_values_are_refused_before_merging(family_dir, monkeypatch, method, params, message):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(family_dir))
    from engine.settings import get_settings

    get_settings.cache_clear()
    with pytest.raises(RecipeError, match=message):
        plan_merge(_recipe(family_dir, method, **params))
