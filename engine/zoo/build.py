"""`python -m engine.zoo build`: corpus → tokenizer → base → experts → joint → scores → manifest.

Design (SPEC "The built-in demo zoo"; the pilot's findings): English plus es and pt (a closely
related pair), de (Germanic), ru (Cyrillic) and bn (Bengali script, Indic, as in the paper).
The base is pretrained on monolingual phrases of all six languages with a minority of
translation examples in all ten directions, so it translates weakly everywhere; each expert
is a full fine-tune on one direction in cycles of 400 × 16 examples: after each cycle its dev
chrF is measured, and an expert below the zoo's aim (chrF 60) gets another cycle, a warm
restart from its saved fp16 weights, up to a cap. Directions that are easy for these models
stop after one cycle, hard ones get the extra training they need, and the build stays inside
its 2-core budget (training every expert longer would not). The joint model is one fine-tune
on all directions. Everything is seeded; zoo/README.md has the measured results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from engine.errors import DataError
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
    # micro_batches: the fastest per step on 2 cores (bench/bench_zoo_step.py); experts gain nothing.
    pretrain: Schedule = Schedule(steps=800, batch_size=64, lr=3e-3, translation_share=0.3, weight_decay=0.01,
                                  micro_batches=4)
    expert: Schedule = Schedule(steps=400, batch_size=16, lr=1e-3)
    joint: Schedule = Schedule(steps=400, batch_size=32, lr=1e-3, micro_batches=2)
    expert_aim_chrf: float = 60.0  # dev chrF an expert must reach to stop after a cycle
    expert_max_cycles: int = 3     # cycles of `expert` at most, whatever the dev chrF
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
    pretrain=Schedule(steps=2, batch_size=4, lr=1e-3, translation_share=0.3, micro_batches=2),
    expert=Schedule(steps=1, batch_size=4, lr=1e-3),
    joint=Schedule(steps=1, batch_size=4, lr=1e-3),
    expert_aim_chrf=100.0, expert_max_cycles=2,  # micro models never reach it: every cycle path runs
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


def score_model(model, tokenizer, corpus: Corpus, config: BuildConfig, directions, split: str = "devtest") -> dict:
    """BLEU / chrF / off-target per direction on a split (devtest unless told) through engine.translate."""
    from engine.translate.evaluate import score_outputs
    from engine.translate.generate import DecodingSettings, generate_translations

    settings = DecodingSettings(max_new_tokens=config.max_new_tokens, batch_size=config.eval_batch_size)
    scores = {}
    for src, tgt in directions:
        pairs = corpus.pairs(split, src, tgt)
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


def _fine_tune_job(out_dir: Path, name: str, data_directions: list[tuple[str, str]], schedule: Schedule, seed: int,
                   corpus: Corpus, config: BuildConfig) -> dict:
    """Fine-tune one model from the saved base, save it, score it; the record goes to .build/<name>.json.

    Runs in a worker process, so it loads the tokenizer and the base from disk: starting from the
    saved fp16 base (not the fp32 training copy) makes every task vector expert − base exact
    against the committed files, and a resumed build equal to an uninterrupted one. An expert
    trains in cycles (see the module docstring); each cycle starts from the previous one's saved
    fp16 weights with a fresh optimizer and its own sampler seed, and is kept under .build until
    the last, so models/<name> only ever holds a finished model.
    """
    import transformers

    torch.set_num_threads(config.torch_threads)
    t0 = time.time()
    models_dir = out_dir / "models"
    tokenizer = transformers.AutoTokenizer.from_pretrained(models_dir / "base")
    working = out_dir / ".build" / f"{name}.cycle"
    start, cycles, losses = models_dir / "base", [], []
    for cycle in range(1 if name == "joint" else config.expert_max_cycles):
        model = load_half(start)
        model.train()
        cycle_seed = seed + 1000 * cycle  # cycle 0 keeps the seed a one-cycle expert always had
        torch.manual_seed(cycle_seed)
        losses = train(model, example_sampler(tokenizer, corpus, data_directions, 1.0, cycle_seed), schedule,
                       tokenizer.pad_token_id, name if cycle == 0 else f"{name} (cycle {cycle + 1})")
        save_half(model, tokenizer, working)
        if name == "joint":
            break
        dev = score_model(load_half(working), tokenizer, corpus, config, data_directions[:1], split="dev")
        dev_chrf = dev["-".join(data_directions[0])]["chrf"]
        cycles.append({"steps": schedule.steps, "seed": cycle_seed, "dev_chrf": dev_chrf})
        if dev_chrf >= config.expert_aim_chrf:
            break
        start = working
    if (models_dir / name).exists():
        shutil.rmtree(models_dir / name)
    working.rename(models_dir / name)
    scored = data_directions if name == "joint" else data_directions[:1]
    return _record(out_dir, name, schedule, seed, data_directions, losses, t0, tokenizer, corpus, config, scored,
                   cycles or None)


def _record(out_dir, name, schedule, seed, data_directions, losses, t0, tokenizer, corpus, config, scored,
            cycles=None) -> dict:
    """The build record of a saved model; `cycles`: an expert's cycles with their dev chrF."""
    trained_s = time.time() - t0
    record = {"schedule": dataclasses.asdict(schedule), "seed": seed, **({"cycles": cycles} if cycles else {}),
              "directions": [f"{s}-{t}" for s, t in data_directions],
              "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
              "devtest": score_model(load_half(out_dir / "models" / name), tokenizer, corpus, config, scored),
              "seconds": {"train": round(trained_s, 1), "score": round(time.time() - t0 - trained_s, 1)}}
    path = out_dir / ".build" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def _finished(out_dir: Path, name: str) -> dict | None:
    """The record of a model an interrupted build already finished (None if not)."""
    path = out_dir / ".build" / f"{name}.json"
    if path.is_file() and (out_dir / "models" / name / "model.safetensors").is_file():
        return json.loads(path.read_text())
    return None


def _adopt(out_dir: Path, name: str, tokenizer, schedule: Schedule, seed: int, data_directions, corpus, config) -> dict | None:
    """A saved model whose build record was lost (e.g. a build killed between saving and scoring):
    kept if its tokenizer is this build's, rescored, with its final loss unknown."""
    folder = out_dir / "models" / name
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        return None
    import transformers

    saved = transformers.AutoTokenizer.from_pretrained(folder)
    if saved.get_vocab() != tokenizer.get_vocab():
        raise DataError(f"{folder}: tokenizer differs from this build's; rebuild without --resume")
    log.info("%s: adopting the saved checkpoint of an interrupted build", name)
    record = _record(out_dir, name, schedule, seed, data_directions, [float("nan")], time.time(), tokenizer, corpus,
                     config, data_directions if name in ("base", "joint") else data_directions[:1])
    record["final_loss"] = None
    record["seconds"] = None
    (out_dir / ".build" / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


def build(out_dir: Path, config: BuildConfig = BuildConfig(), command: str = "", resume: bool = False,
          workers: int = 1) -> dict:
    """Build the whole zoo into out_dir (models/, data/, manifest.json); returns the manifest.

    resume: keep models an interrupted build of the same config finished (same results).
    workers: fine-tune that many models at once, each in its own process with
    config.torch_threads threads. The base trains alone before them, so it gets all
    workers × torch_threads threads. Neither changed a byte of the results where we checked
    (the build test compares 1 and 2 workers; 40 full-size base steps matched on 1 and 2 threads).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.torch_threads * max(1, workers))
    started = time.time()
    directions = config.directions()

    corpus = build_corpus(config.targets, config.seed, config.train_per_kind, config.dev_size, config.devtest_size)
    data = write_data(corpus, config, out_dir / "data")
    tokenizer = train_tokenizer(tokenizer_texts(corpus, directions), config.vocab_size)
    log.info("corpus %s: %s (%.0f s with the tokenizer)", data["corpus_hash"][:12], data["split_sizes"], time.time() - started)

    models_dir = out_dir / "models"
    settings_path = out_dir / ".build" / "config.json"
    settings = json.dumps({"config": dataclasses.asdict(config), "corpus": data["corpus_hash"]}, sort_keys=True)
    if not resume:
        for stale in (models_dir, out_dir / ".build"):
            if stale.exists():
                shutil.rmtree(stale)
    elif settings_path.is_file() and settings_path.read_text() != settings:
        raise DataError(f"{out_dir}: the interrupted build used other settings; rebuild without --resume")
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(settings)

    names = model_names(config)
    overall = tqdm(total=len(names), desc="zoo models", position=0)
    runs: dict[str, dict] = {}
    runs["base"] = _finished(out_dir, "base") if resume else None
    if resume and runs["base"] is None:
        runs["base"] = _adopt(out_dir, "base", tokenizer, config.pretrain, config.seed + 1, directions, corpus, config)
    if runs["base"] is None:
        t0 = time.time()
        base = make_model(tokenizer, config.shape, seed=config.seed + 1)
        sampler = example_sampler(tokenizer, corpus, directions, config.pretrain.translation_share, config.seed + 1)
        losses = train(base, sampler, config.pretrain, tokenizer.pad_token_id, "base (pretraining)")
        save_half(base, tokenizer, models_dir / "base")
        del base
        runs["base"] = _record(out_dir, "base", config.pretrain, config.seed + 1, directions, losses, t0,
                               tokenizer, corpus, config, directions)
    overall.update(1)

    jobs = []
    for index, (name, data_directions) in enumerate([(f"expert-{s}-{t}", [(s, t)]) for s, t in directions]
                                                    + [("joint", directions)]):
        runs[name] = _finished(out_dir, name)
        if runs[name] is None:
            schedule = config.joint if name == "joint" else config.expert
            jobs.append((out_dir, name, data_directions, schedule, config.seed + 100 + index, corpus, config))
        else:
            overall.update(1)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the joint model is the longest run: start it first so it does not finish last alone
        jobs.sort(key=lambda job: job[1] != "joint")
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_fine_tune_job, *job): job[1] for job in jobs}
            for future in as_completed(futures):
                runs[futures[future]] = future.result()
                overall.update(1)
    else:
        for job in jobs:
            runs[job[1]] = _fine_tune_job(*job)
            overall.update(1)
    overall.close()

    models = {}
    for name in names:
        folder = models_dir / name
        models[name] = {**{k: v for k, v in runs[name].items() if k != "seconds"},
                        "parameters": sum(p.numel() for p in load_half(folder).parameters()),
                        "files": folder_hashes(folder),
                        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}
    timings = {name: runs[name]["seconds"] for name in names}
    manifest = {
        "build_command": command or "python -m engine.zoo build",
        "config": dataclasses.asdict(config),
        "data": data,
        "tokenizer": {"vocab_size": len(tokenizer), "kind": "byte-level BPE, digits split before BPE",
                      "sha256": sha256_file(models_dir / "base" / "tokenizer.json")},
        "models": models,
        "timings_s": {"per_model": timings, "this_run_total": round(time.time() - started, 1), "resumed": resume,
                      "workers": workers, "torch_threads": config.torch_threads},
        "packages": package_versions(),
        # torch's float kernels differ between CPU instruction sets, and 800 steps amplify the
        # rounding: a rebuild is byte-identical only where this capability is the same.
        "platform": {"os": sys.platform, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "scoring": "engine.translate: greedy, first line, sacreBLEU corpus BLEU/chrF on devtest; off-target by "
                   "py3langid restricted to the zoo languages",
    }
    write_manifest(out_dir, manifest)
    shutil.rmtree(out_dir / ".build")
    log.info("zoo built in %.0f s into %s", time.time() - started, out_dir)
    return manifest
