"""LAPE selection on planted synthetic counts, histograms, base-vs-fine-tune comparison, NUA."""

from __future__ import annotations

import numpy as np
import pytest

from engine import neurons

LANGS = ("en", "de", "ru", "bn")


def planted(seed: int = 0):
    """(layers, neurons, langs) rates with known language neurons, decoys and background.

    5 % of neurons are planted (p = 0.9 for one or two languages, 0.01 elsewhere); another 5 %
    are decoys with a language-skewed but weak profile (entropy between planted and background,
    p below any activation bar); the rest fire at 0.3–0.5 for every language.
    """
    rng = np.random.default_rng(seed)
    n_layers, n_neurons = 4, 100
    rates = rng.uniform(0.3, 0.5, size=(n_layers, n_neurons, len(LANGS)))
    cells = rng.permutation(n_layers * n_neurons)
    expected = {(l, lang): set() for l in range(n_layers) for lang in LANGS}
    for i, cell in enumerate(cells[:20]):
        layer, neuron = divmod(int(cell), n_neurons)
        langs = [i % 4] if i < 16 else [i % 4, (i + 1) % 4]  # the last four fire for two languages
        rates[layer, neuron] = 0.01
        for j in langs:
            rates[layer, neuron, j] = 0.9
            expected[layer, LANGS[j]].add(neuron)
    for i, cell in enumerate(cells[20:40]):
        layer, neuron = divmod(int(cell), n_neurons)
        rates[layer, neuron] = 0.04
        rates[layer, neuron, i % 4] = 0.2
    return rates, expected


@pytest.mark.parametrize("preset", ["paper", "lape"])
def test_planted_neurons_recovered_exactly(preset):
    rates, expected = planted()
    result = neurons.select_language_neurons(rates, LANGS, preset)
    for layer in range(4):
        for lang in LANGS:
            assert set(result.neurons[layer][lang].tolist()) == expected[layer, lang], (layer, lang)
    expected_counts = np.array([[len(expected[l, lang]) for lang in LANGS] for l in range(4)])
    np.testing.assert_array_equal(result.counts, expected_counts)
    assert result.selected.sum() == (40 if preset == "paper" else 20)


def test_two_language_neuron_assigned_to_both():
    rates = np.full((3, 10, 3), 0.4)
    rates += np.linspace(0, 0.05, 30).reshape(3, 10, 1)  # distinct, near-uniform background
    rates[1, 7] = [0.95, 0.9, 0.01]
    result = neurons.select_language_neurons(
        rates, ("en", "hi", "ta"), neurons.LapeSettings(top_rate=0.04, activation_bar=0.9)
    )
    assert result.neurons[1]["en"].tolist() == [7] and result.neurons[1]["hi"].tolist() == [7]
    assert result.neurons[1]["ta"].tolist() == []


def test_default_preset_and_signature():
    assert neurons.PRESETS["paper"] == neurons.LapeSettings()
    assert neurons.PRESETS["lape"] == neurons.LapeSettings(0.05, 0.95, 0.95)
    rates, _ = planted()
    result = neurons.select_language_neurons(rates, LANGS, span="tgt")
    assert result.signature == "lape|top_rate:0.1|activation_bar:0.8|filter:none|v:1|span:tgt"
    with pytest.raises(ValueError, match="unknown LAPE preset"):
        neurons.select_language_neurons(rates, LANGS, "nope")
    with pytest.raises(ValueError, match="top_rate"):
        neurons.LapeSettings(top_rate=1.5)


def test_dead_neurons_are_never_selected():
    rates, _ = planted()
    rates[0, :50] = 0.0
    result = neurons.select_language_neurons(rates, LANGS)
    assert not result.selected[0, :50].any()
    assert np.isinf(result.entropy[0, :50]).all()


def test_activation_rates_from_counts():
    active = np.array([[[3, 0], [4, 2]]])  # (1 layer, 2 neurons, 2 langs)
    np.testing.assert_allclose(neurons.activation_rates(active, [4, 2]), [[[0.75, 0.0], [1.0, 1.0]]])
    with pytest.raises(ValueError, match="no masked tokens"):
        neurons.activation_rates(active, [4, 0])
    with pytest.raises(ValueError, match="between 0 and the token count"):
        neurons.activation_rates(active, [3, 2])


def test_histograms():
    rates, _ = planted()
    rates[2, :5] = 0.0
    h = neurons.neuron_histograms(rates, bins=10)
    assert h.entropy_counts.shape == (4, 10) and h.selectivity_counts.shape == (4, 10)
    np.testing.assert_array_equal(h.entropy_counts.sum(axis=1), [100, 100, 95, 100])
    np.testing.assert_array_equal(h.selectivity_counts.sum(axis=1), [100, 100, 95, 100])
    assert h.dead.tolist() == [0, 0, 5, 0]
    assert h.entropy_edges[-1] == pytest.approx(np.log(4))


def test_compare_base_and_finetune():
    rates, expected = planted()
    base = neurons.select_language_neurons(rates, LANGS)
    tuned_rates = rates.copy()
    # Layer 0: one planted neuron loses its language, one background neuron gains "de".
    (lang, lost_neuron) = next((lang, n) for lang in LANGS for n in sorted(expected[0, lang]))
    tuned_rates[0, lost_neuron] = 0.4
    gained_neuron = next(
        n for n in range(100) if all(n not in expected[0, l] for l in LANGS) and rates[0, n].max() <= 0.5
    )
    tuned_rates[0, gained_neuron] = [0.01, 0.9, 0.01, 0.01]
    tuned = neurons.select_language_neurons(tuned_rates, LANGS)
    cmp = neurons.compare_selections(base, tuned)
    n0 = len(base.assigned(0))
    lost_pairs = len([l for l in LANGS if lost_neuron in expected[0, l]])
    assert cmp.base[0] == n0 and cmp.gained[0] == 1 and cmp.lost[0] == lost_pairs
    assert cmp.overlap[0] == n0 - lost_pairs and cmp.finetune[0] == n0 - lost_pairs + 1
    assert cmp.jaccard[0] == pytest.approx((n0 - lost_pairs) / (n0 + 1))
    np.testing.assert_array_equal(cmp.jaccard[1:], 1.0)
    assert cmp.per_language["de"]["gained"][0] == 1


def test_jaccard_of_two_empty_sets_is_one():
    rates, _ = planted()
    empty = rates.copy()
    empty[2] = 0.4  # layer 2 has no language-specific neuron in either selection
    a = neurons.select_language_neurons(empty, LANGS)
    b = neurons.select_language_neurons(empty, LANGS)
    assert len(a.assigned(2)) == 0
    cmp = neurons.compare_selections(a, b)
    assert cmp.jaccard[2] == 1.0 and cmp.per_language["de"]["jaccard"][2] == 1.0
    np.testing.assert_array_equal(neurons.jaccard_index([0, 1, 2], [0, 4, 2]), [1.0, 0.25, 1.0])


def test_source_target_overlap_per_layer_and_language():
    src_rates, expected = planted(seed=0)
    tgt_rates = src_rates.copy()
    # On the target span two (layer, language) cells lose every planted neuron.
    moved = [cell for cell in sorted(expected) if expected[cell]][:2]
    for layer, lang in moved:
        for neuron in expected[layer, lang]:
            tgt_rates[layer, neuron] = 0.4
    source = neurons.select_language_neurons(src_rates, LANGS, span="source", conditions="dataset")
    target = neurons.select_language_neurons(tgt_rates, LANGS, span="target", conditions="dataset")
    overlap = neurons.compare_spans(source, target)
    # Independent: the paper's jaccard over Python sets, 1.0 for two empty sets.
    want = np.zeros((4, len(LANGS)))
    for layer in range(4):
        for j, lang in enumerate(LANGS):
            s, t = set(source.neurons[layer][lang].tolist()), set(target.neurons[layer][lang].tolist())
            want[layer, j] = 1.0 if not s and not t else len(s & t) / len(s | t)
    np.testing.assert_allclose(overlap.jaccard, want, rtol=0, atol=0)
    for layer, lang in moved:
        assert overlap.jaccard[layer, LANGS.index(lang)] < 1.0
    np.testing.assert_allclose(overlap.per_language, want.mean(axis=0))
    assert overlap.mean == pytest.approx(want.mean())
    np.testing.assert_array_equal(overlap.source, source.counts)
    assert "span:source vs target" in overlap.signature and "conditions:dataset" in overlap.signature
    with pytest.raises(ValueError, match="conditions differ"):
        neurons.compare_spans(source, neurons.select_language_neurons(src_rates[..., :3], LANGS[:3]))
