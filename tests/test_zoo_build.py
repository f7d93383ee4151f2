"""The micro-build runs every stage of `python -m engine.zoo build` in seconds."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from engine.parallel import load_jsonl
from engine.zoo.build import MICRO, build, model_names
from engine.zoo.manifest import verify_zoo
from engine.zoo.train import encode_translation
from engine.zoo.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, build(folder, MICRO, command="test")


def test_micro_build_end_to_end(micro_zoo, tmp_path):
    zoo, manifest = micro_zoo
    assert set(manifest["models"]) == set(model_names(MICRO))
    assert len(manifest["models"]) == 12
    assert verify_zoo(zoo) == []
    on_disk = json.loads((zoo / "manifest.json").read_text())
    assert on_disk["data"]["split_hashes"] == manifest["data"]["split_hashes"]
    for name, entry in manifest["models"].items():
        folder = zoo / "models" / name
        assert (folder / "model.safetensors").is_file()
        expected = 10 if name in ("base", "joint") else 1
        assert len(entry["devtest"]) == expected
    model = transformers.AutoModelForCausalLM.from_pretrained(zoo / "models" / "expert-en-bn", use_safetensors=True)
    assert model.config.model_type == "qwen2"
    assert next(model.parameters()).dtype.is_floating_point
    assert load_jsonl(zoo / "data" / "devtest" / "en-bn.jsonl").tgt_lang == "bn"


def test_resumed_build_from_a_saved_base_gives_the_same_zoo(micro_zoo, tmp_path):
    """A build interrupted after the base and resumed ends with the same files."""
    zoo, manifest = micro_zoo
    shutil.copytree(zoo / "models" / "base", tmp_path / "models" / "base")
    again = build(tmp_path, MICRO, command="test", resume=True)
    assert again["data"]["corpus_hash"] == manifest["data"]["corpus_hash"]
    for name in ("base", "expert-en-es", "expert-bn-en", "joint"):
        assert again["models"][name]["files"] == manifest["models"][name]["files"], name
    assert again["models"]["base"]["final_loss"] is None  # adopted, not retrained


def test_verify_reports_a_changed_file(micro_zoo, tmp_path):
    shutil.copytree(micro_zoo[0], tmp_path, dirs_exist_ok=True)
    with (tmp_path / "models" / "joint" / "config.json").open("a") as f:
        f.write(" ")
    (tmp_path / "models" / "joint" / "stray.bin").write_bytes(b"x")
    problems = verify_zoo(tmp_path)
    assert any("joint/config.json" in p and "sha256" in p for p in problems)
    assert any("stray.bin" in p and "not listed" in p for p in problems)


def test_loss_covers_only_the_reference_and_its_end():
    tokenizer = train_tokenizer(["Translate the following English sentence to German", "five", "fünf"] * 20, 300)
    ids, labels = encode_translation(tokenizer, "en", "de", "five", "fünf")
    kept = [i for i, label in zip(ids, labels) if label != -100]
    assert tokenizer.decode(kept) == "fünf<|im_end|>"
