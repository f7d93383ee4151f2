"""`python -m engine.zoo build`: corpus → tokenizer → base → experts → joint → scores → manifest.

Design (SPEC "The built-in demo zoo"; the pilot's findings): English plus es and pt (a closely
related pair), de (Germanic), ru (Cyrillic) and bn (Bengali script, Indic, as in the paper).
The base is pretrained on monolingual phrases of all six languages with a minority of
translation examples in all ten directions, so it translates weakly everywhere; each expert
is a full fine-tune on one direction at a low learning rate (small task vectors, as merging
assumes); the joint model is one fine-tune on all directions. Everything is seeded.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from engine.parallel import save_jsonl
from engine.prompts import instruction
from engine.zoo.corpus import Corpus, build_corpus
from engine.zoo.manifest import folder_hashes, package_versions, sha256_file, write_manifest
from engine.zoo.tokenizer import train_tokenizer
from engine.zoo.train import ModelShape, Schedule, example_sampler, make_model, save_half, train

log = logging.getLogger(__name__)
TARGETS = ("es", "pt", "de", "ru", "bn")


@dataclass(frozen=True)
class BuildConfig:
    """Every setting of a zoo build; the whole object is recorded in the manifest."""

    targets: tuple[str, ...] = TARGETS
    seed: int = 0
    train_per_kind: int = 6000
    dev_size: int = 100  # phrases per direction (the same values in every direction)
    devtest_size: int = 300
    vocab_size: int = 1024
    shape: ModelShape = ModelShape()
    pretrain: Schedule = Schedule(steps=800, batch_size=64, lr=3e-3, translation_share=0.3, weight_decay=0.01)
    expert: Schedule = Schedule(steps=250, batch_size=16, lr=6e-4)
    joint: Schedule = Schedule(steps=400, batch_size=32, lr=6e-4)
    max_new_tokens: int = 48
    eval_batch_size: int = 100
    eval_size: int | None = None  # devtest pairs scored per direction (None: all)
    torch_threads: int = 2

    def directions(self) -> list[tuple[str, str]]:
        """En→X for every X, then X→En for every X."""
        return [("en", x) for x in self.targets] + [(x, "en") for x in self.targets]


MICRO = BuildConfig(
    train_per_kind=25, dev_size=8, devtest_size=8, vocab_size=320,
    shape=ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=128),
    pretrain=Schedule(steps=2, batch_size=4, lr=1e-3, translation_share=0.3),
    expert=Schedule(steps=1, batch_size=4, lr=1e-3),
    joint=Schedule(steps=1, batch_size=4, lr=1e-3),
    max_new_tokens=4, eval_batch_size=8, eval_size=4, torch_threads=1,
)
PRESETS = {"full": BuildConfig(), "micro": MICRO}


def model_names(config: BuildConfig) -> list[str]:
    return ["base"] + [f"expert-{s}-{t}" for s, t in config.directions()] + ["joint"]


def tokenizer_texts(corpus: Corpus, directions: list[tuple[str, str]]):
    """Train-split phrases of every language, plus each instruction line a few times so the
    prompt's fixed words become single tokens."""
    for phrase in corpus.splits["train"]:
        yield from phrase.texts.values()
    for _ in range(50):
        for src, tgt in directions:
            yield instruction(src, tgt)


def write_data(corpus: Corpus, config: BuildConfig, data_dir: Path) -> dict:
    """dev and devtest as JSONL per direction (train is regenerated from the seed: too big to ship)."""
    if data_dir.exists():
        shutil.rmtree(data_dir)
    for split in ("dev", "devtest"):
        for src, tgt in config.directions():
            save_jsonl(corpus.pairs(split, src, tgt), data_dir / split / f"{src}-{tgt}.jsonl")
    return {
        "corpus_hash": corpus.content_hash(),
        "split_hashes": {s: corpus.split_hash(s) for s in corpus.splits},
        "split_sizes": {s: len(p) for s, p in corpus.splits.items()},
        "kinds": sorted({p.kind for p in corpus.splits["train"]}),
        "languages": list(corpus.languages),
        "files": folder_hashes(data_dir),
    }


def score_model(model, tokenizer, corpus: Corpus, config: BuildConfig, directions) -> dict:
    """Devtest BLEU / chrF / off-target per direction through engine.translate."""
    from engine.translate.evaluate import score_outputs
    from engine.translate.generate import DecodingSettings, generate_translations

    settings = DecodingSettings(max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size)
    scores = {}
    for src, tgt in directions:
        pairs = corpus.pairs("devtest", src, tgt)
        if config.eval_size:
            pairs = pairs.head(config.eval_size)
        outputs = generate_translations(model, tokenizer, pairs.sources, src, tgt, settings, device="cpu")
        result = score_outputs(pairs, outputs, corpus.languages)
        scores[f"{src}-{tgt}"] = {
            "bleu": round(result.scores.bleu, 2), "chrf": round(result.scores.chrf, 2),
            "off_target": round(result.rates.off_target, 4), "off_target_ref": round(result.rates.off_target_ref, 4),
            "n": len(pairs),
        }
    return scores


def load_half(path: Path):
    """Reload a saved fp16 folder in fp32, so scores describe the committed weights."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()


def build(out_dir: Path, config: BuildConfig = BuildConfig(), command: str = "") -> dict:
    """Build the whole zoo into out_dir (models/, data/, manifest.json); returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.torch_threads)
    started = time.time()
    timings: dict[str, float] = {}
    directions = config.directions()

    corpus = build_corpus(config.targets, config.seed, config.train_per_kind, config.dev_size, config.devtest_size)
    data = write_data(corpus, config, out_dir / "data")
    tokenizer = train_tokenizer(tokenizer_texts(corpus, directions), config.vocab_size)
    timings["corpus_and_tokenizer"] = time.time() - started
    log.info("corpus %s: %s", data["corpus_hash"][:12], data["split_sizes"])

    models_dir = out_dir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    pad = tokenizer.pad_token_id
    names = model_names(config)
    overall = tqdm(total=len(names), desc="zoo models", position=0)
    runs: dict[str, dict] = {}

    def finish(name, model, schedule, seed, data_directions, losses, t0):
        save_half(model, tokenizer, models_dir / name)
        timings[name] = time.time() - t0
        runs[name] = {"schedule": dataclasses.asdict(schedule), "seed": seed,
                      "directions": [f"{s}-{t}" for s, t in data_directions],
                      "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4)}
        overall.update(1)

    t0 = time.time()
    base = make_model(tokenizer, config.shape, seed=config.seed + 1)
    losses = train(base, example_sampler(tokenizer, corpus, directions, config.pretrain.translation_share, config.seed + 1),
                   config.pretrain, pad, "base (pretraining)")
    finish("base", base, config.pretrain, config.seed + 1, directions, losses, t0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    fine_tunes = [(f"expert-{s}-{t}", [(s, t)]) for s, t in directions] + [("joint", directions)]
    for index, (name, data_directions) in enumerate(fine_tunes):
        t0 = time.time()
        seed = config.seed + 100 + index
        schedule = config.joint if name == "joint" else config.expert
        model = make_model(tokenizer, config.shape, seed=seed)
        model.load_state_dict(base_state)
        losses = train(model, example_sampler(tokenizer, corpus, data_directions, 1.0, seed), schedule, pad, name)
        finish(name, model, schedule, seed, data_directions, losses, t0)
    overall.close()

    t0 = time.time()
    models = {}
    for name in tqdm(names, desc="devtest scores"):
        scored = directions if name in ("base", "joint") else [tuple(name.split("-")[1:])]
        folder = models_dir / name
        scores = score_model(load_half(folder), tokenizer, corpus, config, scored)
        params = sum(p.numel() for p in load_half(folder).parameters())
        models[name] = {**runs[name], "parameters": params, "devtest": scores, "files": folder_hashes(folder),
                        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
    timings["scoring"] = time.time() - t0
    timings["total"] = time.time() - started

    manifest = {
        "build_command": command or "python -m engine.zoo build",
        "config": dataclasses.asdict(config),
        "data": data,
        "tokenizer": {"vocab_size": len(tokenizer), "kind": "byte-level BPE, digits split before BPE",
                      "sha256": sha256_file(models_dir / "base" / "tokenizer.json")},
        "models": models,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch_threads": config.torch_threads,
        "packages": package_versions(),
        "platform": sys.platform,
        "scoring": "engine.translate: greedy, first line, sacreBLEU corpus BLEU/chrF on devtest; off-target by "
                   "py3langid restricted to the zoo languages",
    }
    write_manifest(out_dir, manifest)
    log.info("zoo built in %.0f s into %s", timings["total"], out_dir)
    return manifest
