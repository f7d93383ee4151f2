"""Language conditions by data set (the paper's) or by span language, and source-span En→X analyses."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch

from engine.activations import Capture, condition_labels, condition_rates, dataset_condition
from engine.errors import DataError
from engine.neurons import LapeSettings, select_language_neurons

EN_X = [("en", "hi"), ("en", "bn"), ("en", "ta"), ("en", "te")]


def test_condition_is_the_directions_non_english_language():
    assert condition_labels(EN_X, "source") == ["hi", "bn", "ta", "te"]
    assert condition_labels(EN_X, "target") == ["hi", "bn", "ta", "te"]
    assert condition_labels([("hi", "en"), ("bn", "en")], "target") == ["hi", "bn"]
    assert condition_labels(EN_X, "source", "span") == ["en"] * 4
    assert condition_labels(EN_X, "target", "span") == ["hi", "bn", "ta", "te"]
    assert dataset_condition("es", "pt") == "es-pt"  # no English side: the direction is its own condition
    with pytest.raises(DataError, match="unknown condition grouping"):
        condition_labels(EN_X, "source", "language")


def fake_capture(active_source: np.ndarray, tokens_source: np.ndarray, src: str, tgt: str) -> Capture:
    """A capture holding only source-span counts (what LAPE reads)."""
    active = torch.from_numpy(active_source.astype(np.int64))
    return Capture(
        hidden={"source": torch.zeros(active.shape[0] + 1, len(tokens_source), 4)},
        active={"source": active},
        tokens={"source": torch.from_numpy(tokens_source.astype(np.int64))},
        languages={"source": src},
        meta={"direction": f"{src}-{tgt}"},
    )


def test_source_span_en_x_lape_recovers_planted_neurons():
    """English source spans of four En→X sets: neurons planted to fire on one data set's sources
    are found as that condition's, as the paper's source-span analysis reads them."""
    rng = np.random.default_rng(0)
    n_layers, d_mlp = 3, 60
    planted = {(0, 5): "hi", (0, 17): "bn", (1, 40): "ta", (2, 3): "te", (2, 33): "hi"}
    captures, directions, counts, tokens = [], [], {}, {}
    for src, tgt in [*EN_X, ("en", "hi")]:  # two En→hi sets pool into one condition
        per_sentence = rng.integers(3, 9, size=12)
        total = per_sentence.sum()
        active = np.floor(rng.uniform(0.35, 0.45, size=(n_layers, d_mlp)) * total)
        for (layer, neuron), lang in planted.items():
            active[layer, neuron] = np.floor((0.95 if lang == tgt else 0.01) * total)
        captures.append(fake_capture(active, per_sentence, src, tgt))
        directions.append((src, tgt))
        counts[tgt] = counts.get(tgt, 0) + active
        tokens[tgt] = tokens.get(tgt, 0) + total
    conditions, rates = condition_rates(captures, condition_labels(directions, "source"), "source")
    assert conditions == ("bn", "hi", "ta", "te")
    expected_rates = np.stack([counts[c] / tokens[c] for c in conditions], axis=-1)  # float64, pooled by hand
    np.testing.assert_allclose(rates.numpy(), expected_rates, rtol=1e-15)
    # Keep as many neurons as were planted: the lowest-entropy five are exactly those.
    settings = LapeSettings(top_rate=len(planted) / (n_layers * d_mlp), activation_bar=0.95)
    result = select_language_neurons(rates.numpy(), conditions, settings, span="source", conditions="dataset")
    found = {(l, int(i)): lang for l in range(n_layers) for lang, idx in result.neurons[l].items() for i in idx}
    assert found == planted
    assert "conditions:dataset" in result.signature
    # Grouped by the span's language the same data form one condition: nothing to compare.
    assert condition_rates(captures, condition_labels(directions, "source", "span"), "source")[0] == ("en",)


def test_analyze_source_span_on_en_x_data(model_root, tmp_path):
    from engine.__main__ import main
    from engine.activations import capture
    from engine.parallel import ParallelSet, save_jsonl
    from tests.tiny_models import make_model, make_tokenizer, save_checkpoint

    tok = make_tokenizer()
    base_model = make_model("qwen2", seed=1, vocab_size=len(tok))
    paths = {"base": save_checkpoint(model_root / "base", seed=1)}
    for i, name in enumerate(("ft-de", "ft-ru"), start=2):
        paths[name] = save_checkpoint(model_root / name, base=base_model, seed=i, delta_scale=0.05)
    sources = ("twenty-one", "the first of January", "one", "nineteen ninety-nine euros", "four", "three hundred")
    sets = {
        "de": ParallelSet(
            "en", "de", sources, ("einundzwanzig", "der erste Januar", "eins", "neunzehn Euro", "vier", "dreihundert")
        ),
        "ru": ParallelSet("en", "ru", sources, ("двадцать один", "первое января", "один", "евро", "четыре", "триста")),
    }
    for lang, pairs in sets.items():
        save_jsonl(pairs, tmp_path / f"en-{lang}.jsonl")
    out = tmp_path / "report.json"
    args = [
        "analyze",
        "--models",
        *map(str, paths.values()),
        "--data",
        str(tmp_path / "en-de.jsonl"),
        str(tmp_path / "en-ru.jsonl"),
        "--span",
        "src",
        "--rank",
        "3",
        "--out",
        str(out),
        "--batch-size",
        "3",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    section = report["neurons"]
    assert section["conditions"] == "dataset" and section["languages"] == ["de", "ru"]

    # Independent of the engine's pooling and NUA: rates from captures, then the paper's formulas here.
    from engine.checkpoints import load_model, open_checkpoint

    usage, hidden = {}, {}
    for name, path in paths.items():
        model, tokenizer = load_model(open_checkpoint(path), device="cpu")
        caps = [capture(model, tokenizer, sets[lang]) for lang in ("de", "ru")]
        rates = [c.active["source"].double().numpy() / c.tokens["source"].sum().item() for c in caps]
        usage[name] = (rates[0] + rates[1]) / 2  # nua.py --normalize rate: mean over conditions
        hidden[name] = np.concatenate([c.hidden["source"].double().numpy() for c in caps], axis=1)
    pairs = section["nua_pairs"]["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == list(combinations(paths, 2))
    for p in pairs:
        ua, ub = usage[p["a"]], usage[p["b"]]
        want = (ua * ub).sum(1) / np.linalg.norm(ua, axis=1) / np.linalg.norm(ub, axis=1)
        np.testing.assert_allclose(p["per_layer"], want, rtol=1e-6)
    ft_ft = next(p for p in pairs if p["a"] == "ft-de")["per_layer"]
    np.testing.assert_allclose(section["nua_pairs"]["finetune_finetune"], ft_ft, rtol=1e-12)

    # Principal angles of the top-3 PCA subspaces, layer 2, base vs ft-de, from NumPy here.
    def basis(x):
        return np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:3].T

    geo = next(p for p in report["geometry"]["pairs"] if (p["a"], p["b"]) == ("base", "ft-de"))
    cosines = np.linalg.svd(basis(hidden["base"][2]).T @ basis(hidden["ft-de"][2]), compute_uv=False)
    angles = np.arccos(np.clip(cosines, 0, 1))
    assert geo["median_angle_deg"][2] == pytest.approx(np.degrees(np.median(angles)), abs=1e-3)
    assert geo["distance"][2] == pytest.approx(np.sqrt(np.mean(np.sin(angles) ** 2)), abs=1e-5)
    assert len(report["geometry"]["mds"]) == 5 and set(report["geometry"]["mds"][0]) == set(paths)
    overlap = section["models"]["ft-de"]["source_target_overlap"]
    assert np.shape(overlap["jaccard"]) == (4, 2) and "span:source vs target" in overlap["signature"]

    # The span-language option on the same data: every source is English, so LAPE has nothing to compare.
    assert main([*args, "--conditions", "span"]) == 0
    assert "only en" in json.loads(out.read_text())["neurons"]["note"]
