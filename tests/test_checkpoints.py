"""Checkpoints: discovery, lazy reading, fingerprints, compatibility, and every refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from engine import checkpoints as ck
from engine.checkpoints import fingerprints as fp_module
from engine.errors import CheckpointError, IncompatibleModelsError, PathNotAllowedError, SettingsError
from engine.settings import REPO_ROOT, get_settings, load_settings
from tests.tiny_models import make_model, save_checkpoint


def test_discovery_lists_single_file_and_sharded_checkpoints_and_says_why_others_are_refused(model_root):
    save_checkpoint(model_root / "single")
    save_checkpoint(model_root / "group" / "sharded", family="llama", max_shard_size="40KB")
    (model_root / "pickled").mkdir()
    (model_root / "pickled" / "config.json").write_text("{}")
    (model_root / "pickled" / "pytorch_model.bin").write_bytes(b"not a pickle we would ever open")
    (model_root / "notes").mkdir()
    (model_root / "notes" / "readme.txt").write_text("no model here")

    found = ck.discover_checkpoints()

    assert [c.name for c in found.checkpoints] == ["sharded", "single"]
    assert len(found.checkpoints[0].shards) > 1
    ((refused_path, reason),) = found.refused
    assert refused_path.endswith("pickled") and "pytorch_model.bin" in reason and "safetensors only" in reason


def test_summary_counts_parameters_and_bytes_independently_of_the_reader(model_root):
    path = save_checkpoint(model_root / "m", hidden_size=48, num_hidden_layers=3, intermediate_size=80)
    model = make_model("qwen2", hidden_size=48, num_hidden_layers=3, intermediate_size=80)
    summary = ck.open_checkpoint(path).summary
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert (summary.layers, summary.hidden_size, summary.intermediate_size) == (3, 48, 80)
    assert summary.vocab_size == 400 and summary.dtype == "F32"
    assert summary.size_bytes == sum(os.path.getsize(path / f) for f in os.listdir(path) if f.endswith(".safetensors"))


@pytest.mark.parametrize("shard_size", [None, "30KB"])
def test_read_tensor_returns_exactly_the_saved_weights(model_root, shard_size):
    path = save_checkpoint(model_root / "m", family="mistral", seed=3, max_shard_size=shard_size)
    reference = make_model("mistral", seed=3).state_dict()
    ckpt = ck.open_checkpoint(path)
    assert sorted(ckpt.tensor_names) == sorted(reference)
    for name, tensor in reference.items():
        assert ckpt.tensor_shape(name) == tuple(tensor.shape)
        assert torch.equal(ckpt.read_tensor(name), tensor)
    with pytest.raises(CheckpointError, match=r"no tensor named 'model.layers.9.mlp.up_proj.weight'") as err:
        ckpt.read_tensor("model.layers.9.mlp.up_proj.weight")
    assert str(path) in str(err.value)


def test_fingerprint_follows_content_not_sharding(model_root):
    single = ck.open_checkpoint(save_checkpoint(model_root / "single", seed=1))
    sharded = ck.open_checkpoint(save_checkpoint(model_root / "sharded", seed=1, max_shard_size="30KB"))
    other_seed = ck.open_checkpoint(save_checkpoint(model_root / "other", seed=2))
    half = ck.open_checkpoint(save_checkpoint(model_root / "half", seed=1, dtype=torch.float16))
    assert single.fingerprint == sharded.fingerprint
    assert len({single.fingerprint, other_seed.fingerprint, half.fingerprint}) == 3


def test_fingerprint_changes_when_one_value_changes(model_root):
    path = save_checkpoint(model_root / "m", seed=1)
    before = ck.fingerprint(path)
    state = {n: ck.open_checkpoint(path).read_tensor(n).clone() for n in ck.open_checkpoint(path).tensor_names}
    state["model.norm.weight"][5] += 1e-3
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert ck.fingerprint(path) != before


def test_fingerprint_is_remembered_until_the_shard_changes(model_root, monkeypatch):
    path = save_checkpoint(model_root / "m")
    mapped = []
    real_mmap = fp_module.mmap.mmap
    monkeypatch.setattr(fp_module.mmap, "mmap", lambda *a, **k: mapped.append(1) or real_mmap(*a, **k))
    first = ck.fingerprint(path)
    second = ck.fingerprint(path)  # a new Checkpoint object: only the on-disk memo can spare the hashing
    assert first == second and len(mapped) == 1
    stat = (path / "model.safetensors").stat()
    os.utime(path / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ck.fingerprint(path) == first and len(mapped) == 2


def test_compatibility_names_every_mismatch_at_once(model_root):
    base = ck.open_checkpoint(save_checkpoint(model_root / "base"))
    wide = ck.open_checkpoint(save_checkpoint(model_root / "wide", intermediate_size=96))
    llama = ck.open_checkpoint(save_checkpoint(model_root / "llama", family="llama"))
    retok = save_checkpoint(model_root / "retok")
    tok = json.loads((retok / "tokenizer.json").read_text())
    first, second = list(tok["model"]["vocab"])[300:302]
    tok["model"]["vocab"][first], tok["model"]["vocab"][second] = (
        tok["model"]["vocab"][second],
        tok["model"]["vocab"][first],
    )
    (retok / "tokenizer.json").write_text(json.dumps(tok))

    ck.check_compatible([base, ck.open_checkpoint(save_checkpoint(model_root / "twin", seed=5))])
    with pytest.raises(IncompatibleModelsError) as err:
        ck.check_compatible([base, wide, llama, ck.open_checkpoint(retok)])
    message = str(err.value)
    assert "wide" in message and "mlp.gate_proj.weight [96, 32] vs [64, 32]" in message
    assert "architecture LlamaForCausalLM vs Qwen2ForCausalLM" in message
    assert "missing 12 tensor(s)" in message and "q_proj.bias" in message
    assert "retok" in message and "tokenizer vocabularies differ" in message

    # The digest is remembered per version of the file: restoring the vocabulary is seen at once.
    tok["model"]["vocab"][first], tok["model"]["vocab"][second] = (
        tok["model"]["vocab"][second],
        tok["model"]["vocab"][first],
    )
    (retok / "tokenizer.json").write_text(
        json.dumps(tok) + " "
    )  # one byte longer: a new version even within the mtime's resolution
    ck.check_compatible([base, ck.open_checkpoint(retok)])


def test_paths_outside_the_model_roots_are_refused(model_root, tmp_path):
    outside = save_checkpoint(tmp_path / "outside")
    (model_root / "link").symlink_to(outside, target_is_directory=True)
    for path in (outside, model_root / ".." / "outside", model_root / "link"):
        with pytest.raises(PathNotAllowedError, match="outside the configured model roots") as err:
            ck.open_checkpoint(path)
        assert str(path) in str(err.value) and "MERGESCOPE_MODEL_ROOTS" in str(err.value)
    assert ck.discover_checkpoints().refused[0][0].endswith("link")


def test_pickle_only_checkpoint_is_refused_naming_the_file(model_root):
    folder = model_root / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\).*safetensors only"):
        ck.open_checkpoint(folder)


def test_truncated_and_corrupt_safetensors_are_refused_naming_the_file(model_root):
    truncated = save_checkpoint(model_root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated") as err:
        ck.open_checkpoint(truncated)
    assert str(weights) in str(err.value)

    corrupt = save_checkpoint(model_root / "corrupt")
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[8:20] = b"\xff" * 12
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as err:
        ck.open_checkpoint(corrupt)
    assert "corrupt/model.safetensors" in str(err.value)

    sharded = save_checkpoint(model_root / "sharded", max_shard_size="30KB")
    lost = sorted(sharded.glob("*.safetensors"))[1]
    lost.unlink()
    with pytest.raises(CheckpointError, match=f"lists shard\\(s\\) that do not exist: {lost.name}"):
        ck.open_checkpoint(sharded)


def test_remote_code_checkpoints_are_refused(model_root):
    path = save_checkpoint(model_root / "custom")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="trust_remote_code, which MergeScope never enables"):
        ck.open_checkpoint(path)


def test_non_finite_tensors_are_named():
    ck.check_finite(torch.ones(3), "w", "/models/a")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(CheckpointError, match=r"/models/a: tensor 'model.norm.weight' holds 1 NaN/Inf"):
            ck.check_finite(torch.tensor([1.0, bad, 2.0]), "model.norm.weight", "/models/a")


def test_loaded_model_computes_what_the_saved_model_computed(model_root):
    path = save_checkpoint(model_root / "m", family="gemma", seed=4)
    reference = make_model("gemma", seed=4)
    model, tokenizer = ck.load_model(path, device="cpu")
    ids = torch.tensor([tokenizer("twenty-one thousand")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MERGESCOPE_DEVICE", "tpu", "MERGESCOPE_DEVICE: expected one of auto, cpu, cuda"),
        ("MERGESCOPE_CACHE_MAX_GB", "lots", "MERGESCOPE_CACHE_MAX_GB: expected a number"),
        ("MERGESCOPE_MODEL_MEMORY_GB", "0", "MERGESCOPE_MODEL_MEMORY_GB: must be positive"),
    ],
)
def test_bad_settings_name_the_variable(model_root, variable, value, message):
    with pytest.raises(SettingsError, match=message):
        load_settings({"MERGESCOPE_MODEL_ROOTS": str(model_root), variable: value})


def test_missing_model_root_is_named_where_roots_are_used(model_root, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", f"{model_root}:/no/such/folder")
    get_settings.cache_clear()
    for use in (ck.discover_checkpoints, lambda: ck.open_checkpoint(model_root)):
        with pytest.raises(SettingsError, match="MERGESCOPE_MODEL_ROOTS: not a folder: /no/such/folder"):
            use()


def test_checkpoints_cli_lists_what_discovery_finds(model_root):
    save_checkpoint(model_root / "alpha")
    out = subprocess.run(
        [sys.executable, "-m", "engine", "checkpoints", "--json", "--fingerprint"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=os.environ,
        check=True,
    ).stdout
    (row,) = json.loads(out)["checkpoints"]
    assert row["name"] == "alpha" and row["fingerprint"] == ck.fingerprint(model_root / "alpha")
