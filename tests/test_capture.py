"""Capture equals a reference from output_hidden_states and hand-computed gate activations."""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers

from engine.activations import Capture, CaptureSettings, capture, capture_cached, encode_pairs
from engine.errors import DataError, UnsupportedModelError
from engine.parallel import ParallelSet
from engine.settings import cache_store
from tests.tiny_models import FAMILIES, make_model, make_tokenizer

PAIRS = ParallelSet(
    "en",
    "de",
    ("twenty-one thousand three hundred and four", "the first of January", "one", "nineteen ninety-nine euros", "four"),
    ("einundzwanzigtausenddreihundertvier", "der erste Januar", "eins", "neunzehnhundertneunundneunzig Euro", "vier"),
    name="tiny-en-de",
)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def reference(model, tokenizer, pairs):
    """One unpadded sentence at a time: hidden_states from the model, gates from the MLP input."""
    encoded = encode_pairs(tokenizer, pairs)
    layers = model.model.layers
    n_layers, d_mlp = len(layers), model.config.intermediate_size
    hidden = {
        s: torch.zeros(n_layers + 1, len(encoded), model.config.hidden_size, dtype=torch.float64)
        for s in ("source", "target")
    }
    active = {s: torch.zeros(n_layers, d_mlp, dtype=torch.long) for s in ("source", "target")}
    mlp_inputs = {}
    handles = [
        l.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.__setitem__(i, a[0])) for i, l in enumerate(layers)
    ]
    try:
        for n, e in enumerate(encoded):
            with torch.no_grad():
                out = model(torch.tensor([e.input_ids]), output_hidden_states=True)
            for span in ("source", "target"):
                mask = torch.tensor(e.masks[span])
                for l, h in enumerate(out.hidden_states):
                    hidden[span][l, n] = h[0, mask].double().mean(0)
                for l, layer in enumerate(layers):
                    with torch.no_grad():
                        gate = layer.mlp.act_fn(layer.mlp.gate_proj(mlp_inputs[l][0, mask]))  # (tokens, d_mlp)
                    active[span][l] += (gate > 0).sum(0)
    finally:
        for h in handles:
            h.remove()
    return hidden, active


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_capture_matches_reference(family, tokenizer):
    model = make_model(family, vocab_size=len(tokenizer))
    got = capture(model, tokenizer, PAIRS, CaptureSettings(batch_size=3), device="cpu")
    hidden, active = reference(model, tokenizer, PAIRS)
    for span in ("source", "target"):
        assert got.hidden[span].shape == (5, 5, 32)  # (layers + 1, n, d_model)
        torch.testing.assert_close(got.hidden[span].double(), hidden[span], atol=1e-5, rtol=1e-5)
        assert torch.equal(got.active[span], active[span])
        assert got.tokens[span].tolist() == [sum(e.masks[span]) for e in encode_pairs(tokenizer, PAIRS)]
    assert got.languages == {"source": "en", "target": "de"}
    assert 0 < got.rates("target").mean() < 1


def test_hooks_always_removed_and_training_flag_restored(tokenizer):
    model = make_model("qwen2", vocab_size=len(tokenizer)).train()

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hooks()
    calls = []
    capture(model, tokenizer, PAIRS, CaptureSettings(batch_size=2), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (5, 5) and len(calls) == 3
    assert hooks() == before and model.training

    def boom(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        capture(model, tokenizer, PAIRS, progress=boom)
    assert hooks() == before and model.training


def test_unsupported_family_named(tokenizer):
    opt = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            num_hidden_layers=2, hidden_size=16, ffn_dim=32, num_attention_heads=2, vocab_size=len(tokenizer)
        )
    )
    with pytest.raises(UnsupportedModelError, match="OPTForCausalLM: no decoder block list at .model.layers"):
        capture(opt, tokenizer, PAIRS)
    llama = make_model("llama", vocab_size=len(tokenizer))
    del llama.model.layers[1].mlp.gate_proj
    with pytest.raises(UnsupportedModelError, match="block 1 has no mlp.gate_proj"):
        capture(llama, tokenizer, PAIRS)


def test_cached_capture_hits_and_misses(tokenizer, monkeypatch):
    capture_module = importlib.import_module("engine.activations.capture")

    model = make_model("qwen2", vocab_size=len(tokenizer))
    runs = []
    real = capture_module.capture
    monkeypatch.setattr(capture_module, "capture", lambda *a, **k: runs.append(1) or real(*a, **k))
    first = capture_cached(model, tokenizer, PAIRS, model_id="fp-a")
    again = capture_cached(model, tokenizer, PAIRS, model_id="fp-a", settings=CaptureSettings(batch_size=2))
    assert len(runs) == 1  # batch size does not change results, so it is not in the key
    assert torch.equal(first.hidden["source"], again.hidden["source"]) and again.languages == first.languages
    capture_cached(model, tokenizer, PAIRS, model_id="fp-b")
    capture_cached(model, tokenizer, PAIRS.head(3), model_id="fp-a")
    capture_cached(model, tokenizer, PAIRS, model_id="fp-a", settings=CaptureSettings(final_norm=False))
    assert len(runs) == 4
    # A change of instruction wording changes every capture, so it must miss too.
    monkeypatch.setattr("engine.prompts.instruction", lambda s, t: f"Render {s} as {t}")
    capture_cached(model, tokenizer, PAIRS, model_id="fp-a")
    assert len(runs) == 5
    assert isinstance(Capture.from_entry(first.to_entry()), Capture)


def test_bad_input_leaves_cache_empty(tokenizer):
    model = make_model("qwen2", vocab_size=len(tokenizer), max_position_embeddings=16)
    with pytest.raises(DataError, match="tiny-en-de: pair 1 renders to .* more than the model's 16 positions"):
        capture_cached(model, tokenizer, PAIRS, model_id="fp-short")
    assert cache_store().entries() == []
    with pytest.raises(ValueError, match="model identity"):
        capture_cached(model, tokenizer, PAIRS, model_id="")


def test_analyze_cli_end_to_end(model_root, tmp_path):
    import json

    from engine.__main__ import main
    from engine.parallel import save_jsonl
    from tests.tiny_models import save_checkpoint

    base = save_checkpoint(model_root / "base", seed=1)
    tuned = save_checkpoint(
        model_root / "tuned",
        base=make_model("qwen2", seed=1, vocab_size=len(make_tokenizer())),
        seed=2,
        delta_scale=0.05,
    )
    save_jsonl(PAIRS, tmp_path / "en-de.jsonl")
    save_jsonl(
        ParallelSet("en", "ru", PAIRS.sources, ("один", "два", "три", "четыре", "пять")), tmp_path / "en-ru.jsonl"
    )
    out = tmp_path / "report.json"
    args = [
        "analyze",
        "--models",
        str(base),
        str(tuned),
        "--data",
        str(tmp_path / "en-de.jsonl"),
        str(tmp_path / "en-ru.jsonl"),
        "--span",
        "tgt",
        "--out",
        str(out),
        "--batch-size",
        "2",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [m["name"] for m in report["models"]] == ["base", "tuned"]
    [first, second] = report["cka"]
    assert len(first["matrix"]) == 5 and len(first["curve"]) == 5 and "span:target" in first["signature"]
    assert report["neurons"]["languages"] == ["de", "ru"]
    assert len(report["neurons"]["models"]["base"]["counts"]) == 4
    [cmp] = report["neurons"]["comparisons"]
    assert len(cmp["nua"]["per_layer"]) == 4 and cmp["nua"]["mean"] > 0.5
    assert len(cache_store().entries()) == 4  # 2 models × 2 data sets
    # A second run is served from the cache; a one-sentence data file is refused before any work.
    assert main(args) == 0 and len(cache_store().entries()) == 4
    save_jsonl(PAIRS.head(1), tmp_path / "one.jsonl")
    assert (
        main(
            ["analyze", "--models", str(base), "--data", str(tmp_path / "one.jsonl"), "--out", str(tmp_path / "x.json")]
        )
        == 2
    )
    assert not (tmp_path / "x.json").exists()
