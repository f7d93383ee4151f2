"""The micro-build runs every stage of `python -m engine.zoo build` in seconds."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import transformers
from safetensors.torch import load_file
from torch import equal as torch_equal

from engine.parallel import load_jsonl
from engine.settings import REPO_ROOT
from engine.zoo.build import MICRO, _fine_tune_job, build, load_half, model_names
from engine.zoo.corpus import build_corpus
from engine.zoo.manifest import verify_zoo
from engine.zoo.tokenizer import train_tokenizer
from engine.zoo.train import IGNORE, accumulate_loss, encode_translation, example_sampler, save_half, train


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


@pytest.mark.parametrize("micro_batches", [1, 3, 7])
def test_length_sorted_micro_batches_give_the_whole_batch_gradient(micro_batches):
    """Reference in float64: every example alone and unpadded, its log-softmax summed by hand over
    its labelled next tokens, divided by the batch's count of labelled tokens."""
    import torch

    from tests.tiny_models import make_model

    model = make_model(seed=3).double()
    rng = torch.Generator().manual_seed(0)
    examples = []
    for length in [5, 17, 9, 30, 12, 3, 22]:
        ids = torch.randint(3, 400, (length,), generator=rng).tolist()
        labels = [IGNORE if torch.rand(1, generator=rng).item() < 0.4 else token for token in ids]
        examples.append((ids, labels))

    total, count = 0.0, 0
    for ids, labels in examples:
        log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        for position in range(1, len(ids)):
            if labels[position] != IGNORE:
                total = total - log_probs[position - 1, labels[position]]
                count += 1
    (total / count).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    expected_loss = (total / count).item()
    model.zero_grad(set_to_none=True)

    loss = accumulate_loss(model, examples, pad_id=0, max_len=256, micro_batches=micro_batches)
    assert loss == pytest.approx(expected_loss, rel=1e-6)  # transformers takes the loss in float32
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-8, msg=name)


def _fine_tune_by_hand(start, direction, seed, corpus, tokenizer, out):
    """One cycle from the primitives: the saved fp16 start, the sampler seeded with `seed`, saved in fp16."""
    import torch

    model = load_half(start)
    torch.manual_seed(seed)
    train(
        model, example_sampler(tokenizer, corpus, [direction], 1.0, seed), MICRO.expert, tokenizer.pad_token_id, "ref"
    )
    save_half(model, tokenizer, out)
    return out


def _same_weights(a, b):
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(torch_equal(left[k], right[k]) for k in left)


def test_experts_below_the_aim_get_another_cycle_from_their_saved_weights(micro_zoo, tmp_path):
    """MICRO's aim (chrF 100) is never met: every expert runs its 2 cycles, the second a warm restart
    from the first one's saved fp16 weights with seed + 1000; the joint model runs once."""
    zoo, manifest = micro_zoo
    corpus = build_corpus(MICRO.targets, MICRO.seed, MICRO.train_per_kind, MICRO.dev_size, MICRO.devtest_size)
    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo / "models" / "base")
    seed = MICRO.seed + 100  # expert-en-es is the first direction
    first = _fine_tune_by_hand(zoo / "models" / "base", ("en", "es"), seed, corpus, tokenizer, tmp_path / "c1")
    second = _fine_tune_by_hand(first, ("en", "es"), seed + 1000, corpus, tokenizer, tmp_path / "c2")
    assert _same_weights(second, zoo / "models" / "expert-en-es")
    assert not _same_weights(first, zoo / "models" / "expert-en-es")
    cycles = manifest["models"]["expert-en-es"]["cycles"]
    assert [c["seed"] for c in cycles] == [seed, seed + 1000]
    assert all(c["dev_chrf"] < 100 for c in cycles)
    assert "cycles" not in manifest["models"]["joint"]


def test_an_expert_at_the_aim_stops_after_one_cycle(micro_zoo, tmp_path):
    """With an aim every model meets, an expert is one plain fine-tune from the base, as before cycles."""
    zoo, _ = micro_zoo
    shutil.copytree(zoo / "models" / "base", tmp_path / "models" / "base")
    config = dataclasses.replace(MICRO, expert_aim_chrf=0.0)
    corpus = build_corpus(MICRO.targets, MICRO.seed, MICRO.train_per_kind, MICRO.dev_size, MICRO.devtest_size)
    record = _fine_tune_job(tmp_path, "expert-ru-en", [("ru", "en")], MICRO.expert, 108, corpus, config)
    assert len(record["cycles"]) == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo / "models" / "base")
    by_hand = _fine_tune_by_hand(zoo / "models" / "base", ("ru", "en"), 108, corpus, tokenizer, tmp_path / "ref")
    assert _same_weights(by_hand, tmp_path / "models" / "expert-ru-en")
    assert not (tmp_path / ".build" / "expert-ru-en.cycle").exists()


def test_two_workers_and_a_two_thread_base_give_the_same_zoo(micro_zoo, tmp_path):
    """`--workers 2` fine-tunes in a process pool and pretrains the base on 2 threads; the files
    must not change, or the committed zoo's hashes would depend on how it was built."""
    zoo, manifest = micro_zoo
    # Through the CLI in its own process, as a user runs it: the pool's spawned workers re-import
    # the parent's __main__, which in a test process may be a script an earlier test ran.
    subprocess.run(
        [sys.executable, "-m", "engine.zoo", "build", "--preset", "micro", "--workers", "2", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert again["timings_s"]["workers"] == 2
    for name in model_names(MICRO):
        assert again["models"][name]["files"] == manifest["models"][name]["files"], name
