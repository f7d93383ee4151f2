"""Algebra of the merge methods as pure functions over tensors, and the sparsifiers' exactness.

References are planted truths (copies of one model, weight 0, t = 0 / 1), float64 sums, and
torch.sort for the radix selection.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import RecipeError
from engine.merge.registry import get_method, methods
from engine.merge.sparsify import Dropper, top_k, top_k_masks
from engine.merge.spec import MemorySource

shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=20, deadline=None)


def _tensors(shape, seed, n, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) * scale for _ in range(n)]


def _merge(name, base, models, seed=0, **params):
    spec = get_method(name)
    n = len(models)
    values = {}
    for p in spec.params:
        if p.name in params:
            v = params[p.name]
        elif not p.required:
            v = p.default
        else:
            raise KeyError(p.name)
        values[p.name] = [v] * n if (p.scope.value != "global" and not isinstance(v, list)) else v
    return spec.merge(base, models, seed=seed, **values)


GTA = [
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
]


def test_registry_has_mergekits_names_with_papers():
    assert set(methods()) == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "slerp",
        "model_stock",
        "nuslerp",
        "multislerp",
        "karcher",
        "nearswap",
        "arcee_fusion",
        "passthrough",
        "ram",
        "ramplus_tl",
        "tsv_merge",
        "iso_c",
        "iso_cts",
        "pcb_merge",
        "lines",
    }
    for spec in methods().values():
        assert spec.display_name and spec.paper.startswith("https://")
    with pytest.raises(RecipeError, match="unknown merge_method 'tie'.*ties"):
        get_method("tie")


@SETTINGS
@given(shape=shapes, seed=seeds, n=st.integers(2, 4))
def test_copies_of_one_model_merge_to_that_model(shape, seed, n):
    base, x = _tensors(shape, seed, 2)
    copies = [x.clone() for _ in range(n)]
    for name in GTA:
        out = _merge(name, base, copies, weight=0.7, density=1.0, normalize=True)
        torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12, msg=name)
    torch.testing.assert_close(_merge("linear", None, copies, weight=0.3), x)
    torch.testing.assert_close(_merge("sce", base, copies), x)
    torch.testing.assert_close(_merge("model_stock", base, copies), x)
    torch.testing.assert_close(_merge("nuslerp", base, copies[:2], weight=[0.3, 0.9]), x)
    torch.testing.assert_close(_merge("nuslerp", None, copies[:2], weight=[0.3, 0.9]), x)


@SETTINGS
@given(shape=shapes, seed=seeds, n=st.integers(1, 4))
def test_task_arithmetic_with_weight_zero_is_the_base(shape, seed, n):
    base, *models = _tensors(shape, seed, n + 1)
    torch.testing.assert_close(_merge("task_arithmetic", base, models, weight=0.0), base, rtol=0, atol=0)


@SETTINGS
@given(shape=shapes, seed=seeds, w=st.floats(-2, 2).filter(lambda w: abs(w) > 1e-3), normalize=st.booleans())
def test_ties_with_density_one_and_one_model_is_task_arithmetic(shape, seed, w, normalize):
    base, x = _tensors(shape, seed, 2)
    ties = _merge("ties", base, [x], weight=w, density=1.0, normalize=normalize)
    ta = _merge("task_arithmetic", base, [x], weight=w, normalize=normalize)
    torch.testing.assert_close(ties, ta, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(shape=shapes, seed=seeds, n=st.integers(1, 4), normalize=st.booleans())
def test_random_dropping_at_density_one_equals_its_deterministic_counterpart(shape, seed, n, normalize):
    base, *models = _tensors(shape, seed, n + 1)
    weights = [0.2 + 0.3 * i for i in range(n)]
    common = dict(weight=weights, density=1.0, normalize=normalize, rescale=True)
    ta = _merge("task_arithmetic", base, models, **common)
    ties = _merge("ties", base, models, **common)
    for name, reference in (("dare_linear", ta), ("della_linear", ta), ("dare_ties", ties), ("della", ties)):
        torch.testing.assert_close(_merge(name, base, models, seed=seed, **common), reference, msg=name)


@SETTINGS
@given(shape=shapes, seed=seeds)
def test_slerp_endpoints(shape, seed):
    base, x = _tensors(shape, seed, 2)
    torch.testing.assert_close(_merge("slerp", base, [x], t=0.0), base)
    torch.testing.assert_close(_merge("slerp", base, [x], t=1.0), x)


def test_slerp_keeps_the_norm_between_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    mid = _merge("slerp", a, [b], t=0.5)
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5)] * 2, dtype=torch.float64))


@pytest.mark.parametrize("density", [0.1, 0.3, 0.7])
def test_dare_rescaling_keeps_the_expected_delta(density):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(400, 500, generator=g)
    delta = 0.5 + torch.randn(400, 500, generator=g) * 0.2  # mean 0.5: a drift the rescale must keep
    merged = _merge("dare_linear", base, [base + delta], seed=11, weight=1.0, density=density)
    kept = (merged - base).abs() > 1e-6
    n = kept.numel()
    assert abs(kept.float().mean().item() - density) < 4 * math.sqrt(density * (1 - density) / n)
    # Expected task vector is preserved: the mean of the dropped-and-rescaled delta matches the original.
    assert (merged - base).double().mean().item() == pytest.approx(delta.double().mean().item(), rel=5e-3)
    without = _merge("dare_linear", base, [base + delta], seed=11, weight=1.0, density=density, rescale=False)
    assert (without - base).double().mean().item() == pytest.approx(density * delta.double().mean().item(), rel=2e-2)
    # Same seed, same result; another seed, another mask.
    again = _merge("dare_linear", base, [base + delta], seed=11, weight=1.0, density=density)
    assert torch.equal(merged, again)
    other = _merge("dare_linear", base, [base + delta], seed=12, weight=1.0, density=density)
    assert not torch.equal(merged, other)


def test_della_keeps_large_entries_more_often():
    g = torch.Generator().manual_seed(2)
    base = torch.zeros(300, 400)
    delta = torch.randn(300, 400, generator=g)
    merged = _merge("della_linear", base, [delta], seed=3, weight=1.0, density=0.5, epsilon=0.3, rescale=False)
    kept = merged != 0
    ranks = delta.abs().argsort(dim=1).argsort(dim=1).float() / 399  # 0 smallest .. 1 largest, per row
    low, high = kept[ranks < 0.2].float().mean().item(), kept[ranks > 0.8].float().mean().item()
    # keep probability = 0.2 + 0.6 * rank: mean 0.26 over ranks < 0.2, 0.74 over ranks > 0.8
    assert low == pytest.approx(0.2 + 0.6 * 0.1, abs=0.03)
    assert high == pytest.approx(0.2 + 0.6 * 0.9, abs=0.03)


def test_della_refuses_density_epsilon_outside_unit_interval():
    base, x = _tensors((4, 4), 0, 2)
    with pytest.raises(RecipeError, match="density ± epsilon"):
        _merge("della", base, [x], weight=1.0, density=0.9, epsilon=0.2)


@pytest.mark.parametrize("shape", [(23, 17), (300, 40)])  # the larger one samples |delta| to bracket top-k
@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "breadcrumbs_ties", "task_arithmetic", "linear"])
def test_streaming_in_row_chunks_equals_whole_tensor(name, chunk_rows, shape):
    # Chunked sources replay row blocks through every pass; the selection must not depend on the blocking.
    base, *models = _tensors(shape, 4, 4)
    models = [m.float() for m in models]
    base = base.float()
    spec = get_method(name)
    params = {p.name: p.default for p in spec.params if not p.required}
    per = {"weight": [0.5, 1.0, -0.3], "density": [0.3, 0.5, 0.9], "gamma": [0.05, 0.1, 0.0]}
    params.update({k: v for k, v in per.items() if spec.param(k)})
    if name == "linear":
        params["weight"] = [0.5, 1.0, 0.3]
        whole = torch.cat(list(spec.stream(MemorySource(None, models[:3]), **params)))
        chunked = torch.cat(list(spec.stream(MemorySource(None, models[:3], chunk_rows=chunk_rows), **params)))
    else:
        whole = torch.cat(list(spec.stream(MemorySource(base, models[:3]), **params)))
        chunked = torch.cat(list(spec.stream(MemorySource(base, models[:3], chunk_rows=chunk_rows), **params)))
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(seed=seeds, k_frac=st.floats(0, 1), levels=st.integers(2, 50), chunk=st.integers(1, 40))
def test_top_k_keeps_exactly_the_k_largest_even_with_ties(seed, k_frac, levels, chunk):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-levels, levels, (40, 7), generator=g) / 7).float()  # many equal magnitudes
    k = int(k_frac * x.numel())
    chunks = lambda: iter(x.split(chunk))  # noqa: E731
    rule = top_k(chunks, k, x.numel())
    make = top_k_masks(rule)
    mask = torch.cat([make(c) for c in x.split(chunk)])
    assert int(mask.sum()) == k
    if 0 < k < x.numel():
        assert x.abs()[mask].min() >= x.abs()[~mask].max()


@pytest.mark.parametrize("sample_kind", ["spread", "misleading"])
@pytest.mark.parametrize("k_frac", [0.0001, 0.3, 0.5, 0.97])
def test_top_k_from_a_sample_equals_the_radix_select(k_frac, sample_kind):
    # A sample only guesses a bracket; the threshold and tie count must be exact either way.
    g = torch.Generator().manual_seed(7)
    x = (torch.randint(-300, 300, (200, 60), generator=g) / 300).float() * torch.rand(200, 1, generator=g)
    k = max(1, int(k_frac * x.numel()))
    chunks = lambda: iter(x.split(9))  # noqa: E731
    sample = x.reshape(-1)[::2].abs() if sample_kind == "spread" else torch.rand(5000, generator=g) * 1e-3
    rule = top_k(chunks, k, x.numel(), sample)
    assert rule == top_k(chunks, k, x.numel())
    make = top_k_masks(rule)
    mask = torch.cat([make(c) for c in x.split(9)]).reshape(-1)
    order = torch.sort(x.abs().reshape(-1), descending=True, stable=True).indices[:k]  # first in flat order on ties
    expected = torch.zeros(x.numel(), dtype=torch.bool)
    expected[order] = True
    assert torch.equal(mask, expected)


def test_magnitude_dropper_rescale_matches_l1_norm():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(50, 20, generator=g)
    d = Dropper("magnitude", 0.25, lambda: iter([delta]), delta.numel(), rescale=True)
    out = d.start()(delta)
    assert int((out != 0).sum()) == int(0.25 * delta.numel())
    assert out.abs().double().sum().item() == pytest.approx(delta.abs().double().sum().item(), rel=1e-6)


# ---------------------------------------------------------------- mergekit's remaining methods


@SETTINGS
@given(shape=shapes, seed=seeds, n=st.integers(2, 4))
def test_remaining_methods_merge_copies_of_one_model_to_that_model(shape, seed, n):
    base, x = _tensors(shape, seed, 2)
    copies = [x.clone() for _ in range(n)]
    torch.testing.assert_close(_merge("multislerp", base, copies, weight=0.4), x)
    torch.testing.assert_close(_merge("multislerp", None, copies, weight=0.4), x)
    torch.testing.assert_close(_merge("karcher", None, copies), x)
    torch.testing.assert_close(_merge("ram", base, copies), x)
    torch.testing.assert_close(_merge("ramplus_tl", base, copies), x)
    torch.testing.assert_close(_merge("nearswap", x, copies[:1], t=0.01), x)
    torch.testing.assert_close(_merge("arcee_fusion", x, copies[:1]), x)


@SETTINGS
@given(shape=shapes, seed=seeds)
def test_remaining_methods_with_one_expert_or_weight_zero(shape, seed):
    base, x, y = _tensors(shape, seed, 3)
    # One expert: the barycentre of one point is that point; RAM keeps its whole task vector.
    torch.testing.assert_close(_merge("multislerp", base, [x], weight=0.3), x, rtol=0, atol=0)
    torch.testing.assert_close(_merge("karcher", None, [x]), x, rtol=0, atol=0)
    torch.testing.assert_close(_merge("ram", base, [x], epsilon=0.0), x)
    torch.testing.assert_close(_merge("ramplus_tl", base, [x], epsilon=0.0), x)
    torch.testing.assert_close(_merge("passthrough", None, [x]), x, rtol=0, atol=0)
    torch.testing.assert_close(_merge("passthrough", None, [x], scale=[-0.5]), -0.5 * x)
    # Weight 0 on the second model: Multi-SLERP lands on the first (a task vector from the base).
    torch.testing.assert_close(_merge("multislerp", base, [x, y], weight=[0.8, 0.0]), x)
    torch.testing.assert_close(_merge("multislerp", None, [x, y], weight=[0.8, 0.0]), x)
    # NearSwap: t = 0 never moves; a t beyond every distance swaps everything.
    torch.testing.assert_close(_merge("nearswap", base, [x], t=0.0), base, rtol=0, atol=0)
    far = float((x - base).abs().max()) + 1
    torch.testing.assert_close(_merge("nearswap", base, [x], t=far), x)


def test_spherical_means_of_orthogonal_vectors_lie_halfway_at_the_mean_norm():
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 3.0], dtype=torch.float64)
    halfway = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2) * 2.0  # direction 45°, norm (1 + 3) / 2
    torch.testing.assert_close(_merge("karcher", None, [a, b]), halfway)
    torch.testing.assert_close(_merge("multislerp", None, [a, b], weight=1.0), halfway)
    # Weights 2:1: the weighted mean of the unit vectors, (2/3, 1/3), sets the direction (the
    # tangent-space average at that mean is zero), at the weighted mean norm (2·1 + 1·3) / 3.
    lopsided = _merge("multislerp", None, [a, b], weight=[2.0, 1.0], eps=0.0)
    assert math.atan2(lopsided[1].item(), lopsided[0].item()) == pytest.approx(math.atan2(1, 2), abs=1e-12)
    assert lopsided.norm().item() == pytest.approx(5 / 3, abs=1e-12)


def test_multislerp_refuses_directions_that_cancel():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(RecipeError, match="weighted mean of the inputs' directions is zero"):
        _merge("multislerp", None, [a, -a, torch.zeros(2, dtype=torch.float64)], weight=[1.0, 1.0, 0.5])
    # Two antipodal inputs fall back to the straight line between them.
    torch.testing.assert_close(_merge("multislerp", None, [a, -a], weight=1.0), torch.zeros(2, dtype=torch.float64))


def _sparse_task_vectors(seed: int, n: int, shape=(12, 9)):
    """A base and n models whose task vectors are zero at about half the entries."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=torch.float64)
    tvs = [
        torch.randn(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) < 0.5) for _ in range(n)
    ]
    return base, [base + tv for tv in tvs]


def _ram_reference(base, models, epsilon, r=None, alpha=None):
    """RAM / RAM+ from the definitions, in float64 NumPy."""
    b = base.numpy()
    tv = np.stack([m.numpy() - b for m in models])  # (n, ...)
    changed = np.abs(tv) > epsilon
    count = changed.sum(0)
    if r is None:
        return b + (tv * changed).sum(0) / np.maximum(count, 1)
    out = b.copy()
    for i in range(len(models)):
        shared = (changed[i] & (count > 1)).sum()
        unique = (changed[i] & (count == 1)).sum()
        lam = 1 + r * min(max(shared / max(unique, epsilon), 0), alpha)
        out += np.where(count == 1, lam, 1 / np.maximum(count, 1)) * tv[i] * changed[i]
    return out


@pytest.mark.parametrize("seed,n", [(0, 2), (1, 3), (2, 4)])
def test_ram_and_ram_plus_equal_a_numpy_reference(seed, n):
    base, models = _sparse_task_vectors(seed, n)
    for epsilon in (1e-5, 0.3):
        expected = _ram_reference(base, models, epsilon)
        np.testing.assert_allclose(_merge("ram", base, models, epsilon=epsilon).numpy(), expected, rtol=1e-12)
        expected = _ram_reference(base, models, epsilon, r=0.7, alpha=0.9)
        got = _merge("ramplus_tl", base, models, epsilon=epsilon, r=0.7, alpha=0.9)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # An entry only one model changed keeps that model's full change under RAM (not 1/n of it).
    only_first = (models[0] != base) & (models[1] == base)
    for m in models[2:]:
        only_first &= m == base
    merged = _merge("ram", base, models)
    assert only_first.any()
    torch.testing.assert_close(merged[only_first], models[0][only_first])


def test_arcee_fusion_equals_a_numpy_reference():
    g = torch.Generator().manual_seed(9)
    base = torch.randn(40, 30, generator=g, dtype=torch.float64)
    model = base + torch.randn(40, 30, generator=g, dtype=torch.float64) * torch.linspace(0.01, 1.0, 40)[:, None]
    a, b = base.numpy(), model.numpy()

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(b) + 1e-8, softmax(a) + 1e-8
    importance = np.abs(b - a) * (p * np.log(p / q)).sum(-1, keepdims=True)
    ranked = np.sort(importance.ravel())
    q1, q2, q3 = (ranked[int(f * (ranked.size - 1))] for f in (0.25, 0.5, 0.75))
    keep = importance >= q2 + 1.5 * (q3 - q1)
    expected = np.where(keep, b, a)
    got = _merge("arcee_fusion", base, [model]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert 0 < keep.mean() < 0.5  # some entries kept, most not


@pytest.mark.parametrize("chunk_rows", [1, 4])
@pytest.mark.parametrize(
    "name,params",
    [
        ("nearswap", {"t": 0.3}),
        ("ram", {}),
        ("ramplus_tl", {"r": 0.5, "alpha": 0.8}),
        ("passthrough", {"scale": [2.0]}),
    ],
)
def test_remaining_streaming_methods_in_row_chunks_equal_whole_tensor(name, params, chunk_rows):
    base, models = _sparse_task_vectors(3, 1 if name in ("nearswap", "passthrough") else 3, shape=(11, 6))
    spec = get_method(name)
    params = {**{p.name: p.default for p in spec.params if not p.required}, **params}
    source_base = None if name == "passthrough" else base
    whole = torch.cat(list(spec.stream(MemorySource(source_base, models), **params)))
    chunked = torch.cat(list(spec.stream(MemorySource(source_base, models, chunk_rows=chunk_rows), **params)))
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole, spec.merge(source_base, models, **params))
