"""NUA as the paper's nua.py --normalize rate, against float64 NumPy written here from its formula."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from engine import nua


def cosine(x, y):
    return float(np.dot(x, y) / (np.sqrt(np.dot(x, x)) * np.sqrt(np.dot(y, y))))


def paper_usage(over_zero, n):
    """nua.py, rate mode: per language over_zero / n, then the mean over languages. over_zero: (langs, L, I)."""
    return sum(over_zero[k] / n[k] for k in range(len(n))) / len(n)


def models(seed=0, n_layers=7, n_neurons=30, n_langs=4):
    """Per model: (over_zero counts (langs, L, I), tokens per language), and the rates our engine reads."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("base", "ft-hi", "ft-bn", "ft-ta"):
        n = rng.integers(50, 400, size=n_langs).astype(float)
        over = np.floor(rng.uniform(size=(n_langs, n_layers, n_neurons)) * n[:, None, None])
        out[name] = (over, n)
    return out


def as_rates(over, n):
    return np.moveaxis(over / n[:, None, None], 0, -1)  # (layers, neurons, langs)


def test_rate_mode_vectors_are_the_mean_rate_over_languages():
    over, n = models()["base"]
    np.testing.assert_allclose(nua.usage_vectors(as_rates(over, n), "rate"), paper_usage(over, n), rtol=1e-12)
    concat = nua.usage_vectors(as_rates(over, n), "concat")
    assert concat.shape == (7, 30 * 4)
    np.testing.assert_allclose(concat[2, 4 * 5 : 4 * 6], over[:, 2, 5] / n, rtol=1e-12)  # neuron 5's four rates


def test_all_pairs_and_base_vs_finetune_summary():
    data = models()
    rates = {name: as_rates(*v) for name, v in data.items()}
    usage = {name: paper_usage(*v) for name, v in data.items()}
    groups = nua.nua_groups(rates, "base", span="target")
    assert list(groups.pairs) == list(combinations(data, 2))
    for (a, b), result in groups.pairs.items():
        expected = [cosine(usage[a][l], usage[b][l]) for l in range(7)]
        np.testing.assert_allclose(result.per_layer, expected, rtol=1e-12)
    # draw_nua.py: the layerwise mean over base–fine-tune pairs and over fine-tune–fine-tune pairs.
    fts = ["ft-hi", "ft-bn", "ft-ta"]
    base_ft = [np.mean([cosine(usage["base"][l], usage[f][l]) for f in fts]) for l in range(7)]
    ft_ft = [np.mean([cosine(usage[a][l], usage[b][l]) for a, b in combinations(fts, 2)]) for l in range(7)]
    np.testing.assert_allclose(groups.base_finetune, base_ft, rtol=1e-12)
    np.testing.assert_allclose(groups.finetune_finetune, ft_ft, rtol=1e-12)
    # 7 layers in thirds 3 / 2 / 2 (the paper's 36: 0-11, 12-23, 24-35).
    assert groups.thirds == ((0, 3), (3, 5), (5, 7))
    assert nua.thirds_of(36) == ((0, 12), (12, 24), (24, 36))
    assert groups.base_finetune_thirds == pytest.approx(
        (np.mean(base_ft[:3]), np.mean(base_ft[3:5]), np.mean(base_ft[5:]))
    )
    assert groups.finetune_finetune_thirds[2] == pytest.approx(np.mean(ft_ft[5:]))
    assert "nua|rate|" in groups.signature and "span:target" in groups.signature


def test_rate_and_concat_modes_differ_when_languages_swap_neurons():
    # Two models using the same neurons for different languages: same mean usage, different per-language use.
    a = np.zeros((3, 2, 2))
    a[:, 0, 0] = a[:, 1, 1] = 0.8
    b = a[..., ::-1].copy()
    assert nua.neuron_usage_alignment(a, b, mode="rate").per_layer == pytest.approx([1.0] * 3)
    assert nua.neuron_usage_alignment(a, b, mode="concat").per_layer == pytest.approx([0.0] * 3)


def test_nua_refuses_what_cannot_be_aligned():
    rates = models()["base"]
    r = as_rates(*rates)
    with pytest.raises(ValueError, match="cannot be aligned"):
        nua.neuron_usage_alignment(r, r[:, :20])
    with pytest.raises(ValueError, match="unknown NUA mode"):
        nua.neuron_usage_alignment(r, r, mode="count")
    with pytest.raises(ValueError, match="not among the models"):
        nua.nua_groups({"a": r, "b": r}, "base")
