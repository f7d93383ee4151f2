"""Ten decoder families as a researcher brings them (tests/tiny_families.py: base + two bf16
fine-tunes each): discovered, merged equal to a float64 reference and to mergekit 0.1.5, written
as complete loadable folders, captured (CKA, LAPE) and scored on one translation.

mergekit's TIES on bf16 checkpoints differs from ours, and from the definition, where an expert's
|delta| ties its trim threshold: bf16 task vectors take few distinct values, and mergekit picks
among the tied entries by an unstable argsort; with a bf16 recipe it also trims task vectors it
has rounded to bf16 (README, "Merges of bf16 checkpoints against mergekit"). The TIES comparisons
therefore exclude exactly the tied entries; task arithmetic is compared on a bf16 recipe within
bf16 arithmetic, as mergekit adds bf16 task vectors in bf16.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
import torch
import transformers
from safetensors.torch import load_file

from engine import cka, neurons
from engine.activations import CaptureSettings, capture, encode_pairs, language_rates
from engine.checkpoints import config_size, discover_checkpoints, load_model
from engine.merge import iter_merged, merge_into_model, plan_merge, save_merge
from engine.parallel import ParallelSet
from engine.recipe import from_dict
from engine.settings import get_settings
from engine.translate.evaluate import evaluate_direction
from engine.translate.generate import DecodingSettings, ModelTranslator
from engine.zoo.tokenizer import CHAT_TEMPLATE
from tests.tiny_families import EXPERTS, FAMILIES, FAMILY_CONFIGS, HIDDEN, LAYERS, MLP, save_family
from tests.tiny_models import make_tokenizer

WEIGHT, DENSITY = 0.5, 0.5
BF16_ARITHMETIC = 1e-2  # mergekit adds bf16 task vectors in bf16; we add them in float32
EXACT = 1e-5  # float32 against float32 or float64, relative to the tensor's largest entry
MERGEKIT_REFUSES = {"gpt_neox"}  # its gpt-neox.json requires buffers transformers no longer saves

EN_ES = ParallelSet(
    "en",
    "es",
    ("twenty-one", "the first of January", "four hundred", "ninety-nine euros"),
    ("veintiuno", "el primero de enero", "cuatrocientos", "noventa y nueve euros"),
    name="tiny-en-es",
)
EN_RU = ParallelSet(
    "en",
    "ru",
    ("twenty-one", "the first of January", "four hundred", "ninety-nine euros"),
    ("двадцать один", "первое января", "четыреста", "девяносто девять евро"),
    name="tiny-en-ru",
)


@pytest.fixture(scope="session")
def family_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    torch.set_num_threads(1)
    for family in FAMILIES:
        save_family(root, family)
    return root


@pytest.fixture
def families(family_root, model_root, monkeypatch):
    """The families' root, shared by the session; merges go to the test's own root, `model_root`."""
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", f"{family_root}:{model_root}")
    get_settings.cache_clear()
    return family_root


def _recipe(folder, method: str, dtype: str, weight=WEIGHT) -> dict:
    return dict(
        merge_method=method,
        base_model=str(folder / "base"),
        parameters={"weight": weight, **({"density": DENSITY} if method == "ties" else {})},
        dtype=dtype,
        models=[{"model": str(folder / name)} for name in EXPERTS],
    )


def _tensors(folder) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as float64 (bf16 values are exact in float64)."""
    return {k: v.double().numpy() for k, v in load_file(folder / "model.safetensors").items()}


def task_arithmetic_reference(base: np.ndarray, experts: list[np.ndarray]) -> np.ndarray:
    """Ilharco et al. 2022: base + Σ weight · (expert − base)."""
    return base + sum(WEIGHT * (e - base) for e in experts)


def trim(delta: np.ndarray) -> np.ndarray:
    """TIES step 1: keep the int(density · n) largest |delta|, ties at the threshold in flat order."""
    flat = delta.reshape(-1)
    k = max(1, int(DENSITY * flat.size))
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
    return np.where(keep, flat, 0.0).reshape(delta.shape)


def ties_reference(base: np.ndarray, experts: list[np.ndarray]) -> np.ndarray:
    """Yadav et al. 2023: trim each task vector, elect the sign of the weighted sum per entry, then
    average the weighted deltas that agree with it (divided by their weights: normalize on)."""
    deltas = np.stack([WEIGHT * trim(e - base) for e in experts])  # (experts, *shape)
    sign = np.where(deltas.sum(axis=0) >= 0, 1.0, -1.0)
    agree = np.sign(deltas) == sign
    divisor = (WEIGHT * agree).sum(axis=0)
    return base + (deltas * agree).sum(axis=0) / np.where(divisor == 0, 1.0, divisor)


def tied_at_threshold(base: np.ndarray, experts: list[np.ndarray]) -> np.ndarray:
    """Entries where some expert's |delta| equals its trim threshold and more entries share that
    value than the density keeps: which of them survive is a tie-break, not the definition."""
    tied = np.zeros(base.shape, dtype=bool)
    for e in experts:
        magnitude = np.abs(e - base)
        k = max(1, int(DENSITY * magnitude.size))
        threshold = np.sort(magnitude, axis=None)[::-1][k - 1]
        if (magnitude >= threshold).sum() > k:
            tied |= magnitude == threshold
    return tied


REFERENCES = {"task_arithmetic": task_arithmetic_reference, "ties": ties_reference}


def _ours(cfg: dict) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in iter_merged(plan_merge(from_dict(cfg)), "cpu")}


def _mergekit(cfg: dict, out) -> dict[str, np.ndarray]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(cfg), str(out), MergeOptions(quiet=True))
    return _tensors(out)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).double().numpy()


def _relative(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = np.abs(a - b) if where is None else np.abs(a - b)[where]
    return float(diff.max(initial=0.0) / max(np.abs(b).max(), 1e-30))


def test_every_family_discovered_with_its_shape(families):
    found = discover_checkpoints()
    assert not found.refused
    summaries = {(c.path.parent.name, c.name): c.summary for c in found.checkpoints}
    assert set(summaries) == {(f, n) for f in FAMILIES for n in ("base", *EXPERTS)}
    for (family, _), s in summaries.items():
        assert (s.layers, s.hidden_size, s.intermediate_size, s.dtype) == (LAYERS, HIDDEN, MLP, "BF16"), family


def test_gpt2_config_sizes_read_under_their_own_names():
    config = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_inner": None, "vocab_size": 50257}
    sizes = [config_size(config, f) for f in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")]
    assert sizes == [12, 768, 4 * 768, 50257]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_merge_equals_the_definition(families, family, method):
    folder = families / family
    base, experts = _tensors(folder / "base"), [_tensors(folder / n) for n in EXPERTS]
    ours = _ours(_recipe(folder, method, "float32"))
    assert set(ours) == set(base)
    for name, b in base.items():
        ref = REFERENCES[method](b, [e[name] for e in experts])
        assert _relative(ours[name], ref) <= EXACT, f"{family} {method}: {name}"
    # bf16 out: our float32 result rounded once, so within half a bf16 step (2^-8 relative) of the reference.
    ours_bf16 = _ours(_recipe(folder, method, "bfloat16"))
    for name, b in base.items():
        ref = REFERENCES[method](b, [e[name] for e in experts])
        assert np.all(np.abs(ours_bf16[name] - ref) <= 2**-8 * np.abs(ref) * (1 + 1e-3) + 1e-30), f"{family}: {name}"
    # Equality proves little unless the merge moves (bf16 noise on a norm weight of 1 may round away).
    moved = [n for n in base if not np.array_equal(ours[n], base[n])]
    assert len(moved) >= len(base) // 2


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - MERGEKIT_REFUSES))
def test_merge_equals_mergekit(families, family, tmp_path):
    folder = families / family
    base, experts = _tensors(folder / "base"), [_tensors(folder / n) for n in EXPERTS]

    # A per-layer schedule: both sides must find each family's blocks and count them alike.
    cfg = _recipe(folder, "task_arithmetic", "bfloat16", weight=[0.2, 1.0])
    theirs, ours = _mergekit(cfg, tmp_path / "ta"), _ours(cfg)
    assert set(theirs) == set(ours)
    for name in ours:
        assert _relative(ours[name], theirs[name]) <= BF16_ARITHMETIC, f"{family} task arithmetic: {name}"

    cfg = _recipe(folder, "ties", "float32")
    theirs, ours = _mergekit(cfg, tmp_path / "ties"), _ours(cfg)
    assert set(theirs) == set(ours)
    for name in ours:
        tied = tied_at_threshold(base[name], [e[name] for e in experts])
        assert _relative(ours[name], theirs[name], ~tied) <= EXACT, f"{family} TIES: {name}"
        differs = np.abs(ours[name] - theirs[name]) > EXACT * np.abs(theirs[name]).max()
        assert not (differs & ~tied).any()

    # A bf16 recipe: mergekit trims task vectors it has rounded to bf16 (ft − base in bf16), so its
    # output is the definition applied to those, outside their ties, within bf16 arithmetic.
    theirs = _mergekit(_recipe(folder, "ties", "bfloat16"), tmp_path / "ties-bf16")
    for name, b in base.items():
        rounded = [b + _to_bf16(e[name] - b) for e in experts]
        tied = tied_at_threshold(b, rounded)
        assert _relative(theirs[name], ties_reference(b, rounded), ~tied) <= BF16_ARITHMETIC, f"{family}: {name}"


def test_mergekit_refuses_gpt_neox_as_transformers_saves_it(families, tmp_path):
    with pytest.raises(RuntimeError, match=r"attention\.(masked_)?bias required but not present"):
        _mergekit(_recipe(families / "gpt_neox", "task_arithmetic", "bfloat16"), tmp_path / "mk")


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_folder_complete_and_loadable(families, family, tmp_path):
    """save_merge writes a folder transformers loads with nothing missing, holding our merged
    tensors; merge_into_model builds the same model in memory."""
    recipe = from_dict(_recipe(families / family, "ties", "bfloat16"))
    out = save_merge(recipe, tmp_path / "merged", device="cpu")
    base = families / family / "base"
    for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / file).is_file(), file
    assert (out / "generation_config.json").read_text() == (base / "generation_config.json").read_text()
    written, merged = _tensors(out), _ours(_recipe(families / family, "ties", "bfloat16"))
    assert set(written) == set(merged) and all(np.array_equal(written[k], merged[k]) for k in merged)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert [type(model).__name__] == json.loads((base / "config.json").read_text())["architectures"]
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == CHAT_TEMPLATE
    live, _ = merge_into_model(recipe, "cpu", dtype=torch.bfloat16)
    loaded, in_memory = model.state_dict(), live.state_dict()
    assert set(loaded) == set(in_memory)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, in_memory[name]), name


def _blocks_and_neurons(model, family: str):
    """The block list and, per block, the neuron activations from the MLP's input, written from
    each family's modelling code (independently of engine.activations.families)."""
    if family == "gpt2":
        return model.transformer.h, lambda mlp, x: mlp.act(mlp.c_fc(x))
    if family == "gpt_neox":
        return model.gpt_neox.layers, lambda mlp, x: mlp.act(mlp.dense_h_to_4h(x))
    if family == "phi3":
        return model.model.layers, lambda mlp, x: mlp.activation_fn(mlp.gate_up_proj(x).chunk(2, dim=-1)[0])
    return model.model.layers, lambda mlp, x: mlp.act_fn(mlp.gate_proj(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_matches_hidden_states_and_mlp_activations(family, one_torch_thread):
    """Pooled hidden states equal output_hidden_states; neuron counts equal act(first projection) > 0."""
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILY_CONFIGS[family](len(tokenizer))).eval()
    got = capture(model, tokenizer, EN_ES, CaptureSettings(batch_size=3, final_norm=True), device="cpu")
    blocks, activation = _blocks_and_neurons(model, family)
    mlp_inputs, expected = {}, torch.zeros(LAYERS, MLP, dtype=torch.long)  # (layers, d_mlp)
    handles = [
        b.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.__setitem__(i, a[0])) for i, b in enumerate(blocks)
    ]
    try:
        for n, pair in enumerate(encode_pairs(tokenizer, EN_ES)):
            with torch.no_grad():
                out = model(torch.tensor([pair.input_ids]), output_hidden_states=True)
            mask = torch.tensor(pair.masks["target"])
            for layer, h in enumerate(out.hidden_states):
                torch.testing.assert_close(got.hidden["target"][layer, n], h[0, mask].mean(0), atol=1e-5, rtol=1e-5)
            for layer, block in enumerate(blocks):
                with torch.no_grad():
                    expected[layer] += (activation(block.mlp, mlp_inputs[layer][0, mask]) > 0).sum(0)
    finally:
        for handle in handles:
            handle.remove()
    assert got.active["target"].shape == (LAYERS, MLP)
    assert torch.equal(got.active["target"], expected)
    assert 0 < got.rates("target").mean() < 1


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_family_analysed_and_translated(families, model_root, family, one_torch_thread):
    """The TIES merge loaded from its folder: capture, CKA and LAPE give finite values of the right
    shapes, and one translation is scored as sacreBLEU scores its outputs."""
    out = save_merge(from_dict(_recipe(families / family, "ties", "bfloat16")), model_root / "ties")
    model, tokenizer = load_model(out, "cpu")
    captures = [
        capture(model, tokenizer, pairs, CaptureSettings(batch_size=4), device="cpu") for pairs in (EN_ES, EN_RU)
    ]
    hidden = captures[0].hidden["source"]
    assert hidden.shape == (LAYERS + 1, len(EN_ES), HIDDEN) and torch.isfinite(hidden).all()
    matrix = cka.cka_matrix(hidden, captures[1].hidden["source"], span="source")
    assert matrix.values.shape == (LAYERS + 1, LAYERS + 1)
    assert np.isfinite(matrix.values).all() and (matrix.values <= 1 + 1e-9).all()
    languages, rates = language_rates(captures, "target")  # (layers, d_mlp, languages)
    assert languages == ("es", "ru") and rates.shape == (LAYERS, MLP, 2)
    selection = neurons.select_language_neurons(rates.numpy(), languages, "paper", span="target")
    assert selection.counts.shape == (LAYERS, 2) and np.isfinite(selection.counts).all()
    assert ((rates >= 0) & (rates <= 1)).all() and rates.std() > 0

    translator = ModelTranslator(model, tokenizer, f"{family}-ties", DecodingSettings(max_new_tokens=6), "cpu")
    result = evaluate_direction(translator, EN_ES.head(2), use_cache=False)
    outputs = [s.output for s in result.samples]
    assert len(outputs) == 2
    assert result.scores.chrf == pytest.approx(sacrebleu.corpus_chrf(outputs, [list(EN_ES.targets[:2])]).score)


@pytest.mark.parametrize("family,name", [("llama", "act_fn"), ("phi3", "activation_fn"), ("gpt2", "act")])
def test_shared_activation_module_counted_per_block(family, name, one_torch_thread):
    """One activation module shared by every block cannot tell blocks apart by its hook: capture
    hooks the first projection instead (the gate half when fused) and gets the same counts."""
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(FAMILY_CONFIGS[family](len(tokenizer))).eval()
    settings = CaptureSettings(batch_size=4, final_norm=True)
    own = capture(model, tokenizer, EN_ES, settings, device="cpu")
    blocks, _ = _blocks_and_neurons(model, family)
    shared = getattr(blocks[0].mlp, name)
    for block in blocks:
        setattr(block.mlp, name, shared)
    again = capture(model, tokenizer, EN_ES, settings, device="cpu")
    assert torch.equal(own.active["source"], again.active["source"])
    assert own.active["source"].sum() > 0
