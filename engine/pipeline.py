"""The one data flow behind the dashboard and the CLI, as plain functions.

    recipe -> model (merged in memory) -> captured statistics (cached) -> analyses -> results

A *system* is anything the dashboard can score or compare: a discovered checkpoint (identity:
its fingerprint) or the merge a recipe describes (identity: the recipe's content hash).
Identities are what the content-addressed cache is keyed by, so a view that was computed once
(by any session, or by the CLI) comes back without loading a model at all; models are loaded
or merged only when the cache misses, through `ModelCache`, which the dashboard keeps in
`st.cache_resource` and therefore shares between sessions (it is thread-safe).

Nothing here imports Streamlit.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from engine.checkpoints import (
    Checkpoint, compatibility_problems, discover_checkpoints, load_model, load_tokenizer, open_checkpoint,
)
from engine.device import default_device, model_memory_budget
from engine.checkpoints.discover import Discovery
from engine.errors import DataError, RecipeError
from engine.parallel import ParallelSet, load_jsonl
from engine.prompts import LANGUAGE_NAMES
from engine.settings import get_settings, model_roots

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, what is running)
MERGE = "merge"  # the system name of the current recipe's merge
SPANS = ("source", "target")
_DIRECTION = re.compile(r"(?<![a-z])([a-z]{2})(?:[-_]?(?:2|to)[-_]?|[-_])([a-z]{2})(?![a-z])")


# --------------------------------------------------------------------------- checkpoints


def discover(roots: Sequence[Path] | None = None) -> Discovery:
    """Checkpoints under the model roots (default: configured), and the folders refused with their reasons."""
    return discover_checkpoints(tuple(Path(r).resolve() for r in roots) if roots is not None else None)


def checkpoint_label(checkpoint: Checkpoint, roots: Sequence[Path] | None = None) -> str:
    """A checkpoint's name in pickers and links: its path relative to the model root holding it."""
    for root in roots if roots is not None else model_roots():
        try:
            return checkpoint.path.relative_to(root).as_posix()
        except ValueError:
            continue
    return checkpoint.name


def checkpoints_by_label(discovery: Discovery | None = None) -> dict[str, Checkpoint]:
    discovery = discovery or discover()
    return {checkpoint_label(c): c for c in discovery.checkpoints}


def summary_rows(discovery: Discovery) -> list[dict]:
    """One plain dict per checkpoint for the Models table."""
    rows = []
    for c in discovery.checkpoints:
        s = c.summary
        rows.append({
            "name": checkpoint_label(c), "direction": checkpoint_direction(c) or "", "architecture": s.architecture,
            "layers": s.layers, "hidden": s.hidden_size, "mlp": s.intermediate_size, "vocab": s.vocab_size,
            "dtype": s.dtype, "parameters (M)": round(s.parameters / 1e6, 2), "size (MB)": round(s.size_bytes / 1e6, 2),
        })
    return rows


def checkpoint_direction(checkpoint: Checkpoint) -> str | None:
    """The translation direction a fine-tune was trained for, e.g. 'en-es', when its name says so.

    The zoo names experts by direction; a researcher's own folders ('qwen-en-hi', 'hi2en') follow
    the same pattern. None for a base or a multilingual model.
    """
    return direction_from_name(checkpoint_label(checkpoint))


def direction_from_name(name: str) -> str | None:
    for match in _DIRECTION.finditer(name.lower()):
        src, tgt = match.groups()
        if src != tgt and src in LANGUAGE_NAMES and tgt in LANGUAGE_NAMES:
            return f"{src}-{tgt}"
    return None


def compatibility(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Every reason the checkpoints cannot be merged or compared tensor by tensor (empty: fine)."""
    return compatibility_problems(list(checkpoints))


# --------------------------------------------------------------------------- recipes


def method_specs() -> dict:
    """The merge registry: method name -> MethodSpec (parameters, display name, paper)."""
    from engine.merge.registry import methods

    return methods()


def build_recipe(base: str, experts: Sequence[str], method: str, params: dict, schedules: dict | None = None):
    """A recipe for `method` over `experts` on `base` (checkpoint labels); every expert gets the
    same per-model values, as in the paper (equal weight per expert). `schedules` maps a
    parameter to a list of values interpolated over the layers (mergekit's gradients).
    RecipeError when the pieces do not make a valid recipe.
    """
    from engine import recipe as recipes

    by_label = checkpoints_by_label()
    missing = [name for name in [base, *experts] if name not in by_label]
    if missing:
        raise RecipeError(f"no checkpoint called {', '.join(missing)} under the model roots")
    spec = method_specs()[method]
    values = {**params, **(schedules or {})}
    per_model = {p.name: values[p.name] for p in spec.model_params if p.name in values}
    data = {
        "merge_method": method,
        "base_model": str(by_label[base].path),
        "models": [{"model": str(by_label[e].path), **({"parameters": dict(per_model)} if per_model else {})}
                   for e in experts if e != base],
    }
    if spec.base_use.value == "input":  # linear: the base is an ordinary weighted input
        data["models"].append({"model": str(by_label[base].path), **({"parameters": dict(per_model)} if per_model else {})})
    if globals_ := {p.name: values[p.name] for p in spec.global_params if p.name in values}:
        data["parameters"] = globals_
    return recipes.from_dict(data, source="the recipe built on the Models page")


def recipe_yaml(recipe) -> str:
    """mergekit YAML of a recipe."""
    return recipe.to_yaml()


def parse_recipe(text: str, source: str = "the pasted recipe"):
    """A recipe from mergekit YAML; RecipeError naming the problem."""
    from engine import recipe as recipes

    return recipes.loads(text, source)


def recipe_hash(recipe) -> str:
    """Content hash of a merge (weights fingerprints, canonical parameters): its cache identity."""
    from engine import recipe as recipes

    return recipes.content_hash(recipe)


@dataclass(frozen=True)
class RecipeView:
    """What the Models page's pickers need to show a loaded recipe."""

    base: str
    experts: list[str]
    method: str
    params: dict  # scalar values, one per parameter (the first expert's, then the global ones)
    schedules: dict  # parameter -> list of values over the layers
    notes: list[str]  # what the pickers cannot show (per-expert differences, filters)


def recipe_view(recipe) -> RecipeView:
    """Map a recipe's checkpoint paths back to labels; RecipeError for paths that are not discovered."""
    from engine.checkpoints import resolve_model_path

    by_path = {c.path: label for label, c in checkpoints_by_label().items()}

    def label(ref: str) -> str:
        real = resolve_model_path(ref)
        if real not in by_path:
            raise RecipeError(f"{recipe.source or 'recipe'}: {ref} is not a checkpoint under the model roots")
        return by_path[real]

    if not recipe.base_model:
        raise RecipeError(f"{recipe.source or 'recipe'}: the dashboard needs a base_model to compare against")
    base = label(recipe.base_model)
    experts = [label(m.model) for m in recipe.models if m.model != recipe.base_model]
    params, schedules, notes = {}, {}, []
    for scope in ([recipe.models[0].parameters] if recipe.models else []) + [recipe.parameters]:
        for name, value in scope.items():
            if isinstance(value, (int, float)):  # bool included
                params.setdefault(name, value)
            elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                schedules.setdefault(name, [float(v) for v in value])
            else:
                notes.append(f"parameter {name!r} uses tensor filters; the pickers show its default")
    if any(m.parameters != recipe.models[0].parameters for m in recipe.models[1:]):
        notes.append("experts have different parameters; the pickers show the first expert's")
    return RecipeView(base, experts, recipe.merge_method, params, schedules, notes)


# --------------------------------------------------------------------------- systems and models


@dataclass(frozen=True)
class System:
    """A model the dashboard can score or compare: a checkpoint or a recipe's merge."""

    name: str
    identity: str
    checkpoint: Checkpoint | None = None
    recipe: object | None = field(default=None, compare=False)
    direction: str | None = None  # the direction an expert was trained for

    @property
    def is_merge(self) -> bool:
        return self.recipe is not None


def checkpoint_system(checkpoint: Checkpoint) -> System:
    return System(checkpoint_label(checkpoint), checkpoint.fingerprint, checkpoint=checkpoint,
                  direction=checkpoint_direction(checkpoint))


def merge_system(recipe, name: str = MERGE) -> System:
    return System(name, recipe_hash(recipe), recipe=recipe)


@dataclass
class LoadedModel:
    """A live model and its tokenizer. `lock` serialises use: capture hooks mutate the module."""

    model: object
    tokenizer: object
    identity: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @functools.cached_property
    def weight_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (tied weights counted once)."""
        return self.model.get_memory_footprint(return_buffers=True)


class ModelCache:
    """Loaded and merged models by identity, within a budget of weight bytes, least recently
    used dropped first; thread-safe.

    Two sessions asking for the same model at once build it once: the second waits on a
    per-identity lock instead of merging again. The budget is in bytes, not models: a count
    that suits 7B checkpoints thrashes on the demo zoo (four sessions' merges, base, experts and
    joint model are 8 models of 6 MB; with room for 6, merges were rebuilt mid-page, doubling
    the server's CPU in a 4-session cold round) and overflows memory with large ones.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = model_memory_budget() if budget_bytes is None else budget_bytes
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self.builds = 0  # how many models were loaded or merged (for tests and benchmarks)

    def get(self, system: System) -> LoadedModel:
        """The live model of `system`, loading the checkpoint or running the merge on a miss."""
        with self._lock:
            if system.identity in self._models:
                self._models.move_to_end(system.identity)
                return self._models[system.identity]
            build_lock = self._building.setdefault(system.identity, threading.Lock())
        with build_lock:
            with self._lock:
                if system.identity in self._models:
                    return self._models[system.identity]
            loaded = self._build(system)
            with self._lock:
                self._models[system.identity] = loaded
                self.builds += 1
                # The model just built stays even alone over budget: its caller is about to use it.
                while len(self._models) > 1 and sum(m.weight_bytes for m in self._models.values()) > self.budget_bytes:
                    dropped, _ = self._models.popitem(last=False)
                    log.info("model cache full: dropped %s", dropped[:12])
                self._building.pop(system.identity, None)
        return loaded

    def __contains__(self, identity: str) -> bool:
        with self._lock:
            return identity in self._models

    def _build(self, system: System) -> LoadedModel:
        if system.is_merge:
            from engine.merge import merge_into_model  # imported on first merge: keeps app start-up light

            log.info("merging %s in memory", system.identity[:12])
            model, tokenizer = merge_into_model(system.recipe)
        else:
            log.info("loading %s", system.checkpoint.path)
            model, tokenizer = load_model(system.checkpoint)
        return LoadedModel(model, tokenizer, system.identity)


def limit_torch_threads(cpus: int | None = None) -> int:
    """Torch threads per job for a server that runs several jobs at once (sessions' merges,
    evaluations and captures, and the prefetch worker): a quarter of the cores, at least one.

    Torch's default (every core per job) oversubscribes the CPU as soon as two jobs overlap, and
    OpenMP threads then spin against each other: on 2 cores, one cold Merge → Scores → Layers took
    62 s (31 s of server CPU) with the default and 15 s (6 s) with one thread. An explicit
    OMP_NUM_THREADS is left alone. Returns the thread count in effect.
    """
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (cpus or os.cpu_count() or 1) // 4))
    return torch.get_num_threads()


# --------------------------------------------------------------------------- data


def data_root() -> Path:
    """Parallel data for evaluation and capture (MERGESCOPE_DATA_DIR, default the zoo's data)."""
    return get_settings().data_dir


@functools.lru_cache(maxsize=256)
def _load_set(path: str, mtime_ns: int) -> ParallelSet:
    return load_jsonl(path)


def data_sets(split: str, directions: Iterable[str] | None = None, n: int | None = None) -> list[ParallelSet]:
    """The split's parallel sets (one per direction), first `n` pairs each, sorted by direction.

    Files are JSON Lines under the data root whose relative path names the split as one of its
    parts ('dev/en-es.jsonl', 'en-es.devtest.jsonl'), so 'dev' never matches 'devtest'.
    """
    root = data_root()
    if not root.is_dir():
        raise DataError(f"{root}: no data folder (set MERGESCOPE_DATA_DIR or build the demo zoo)")
    wanted = set(directions) if directions is not None else None
    found: dict[str, ParallelSet] = {}
    for file in sorted(root.rglob("*.jsonl")):
        parts = re.split(r"[/._-]", file.relative_to(root).as_posix())
        if split not in parts:
            continue
        pairs = _load_set(str(file), file.stat().st_mtime_ns)
        if wanted is not None and pairs.direction not in wanted:
            continue
        found.setdefault(pairs.direction, pairs)
    if wanted and (missing := sorted(wanted - set(found))):
        raise DataError(f"{root}: no {split} data for {', '.join(missing)}")
    return [found[d].head(n) if n else found[d] for d in sorted(found)]


def available_directions(split: str) -> list[str]:
    try:
        return [s.direction for s in data_sets(split)]
    except DataError:
        return []


def data_languages() -> tuple[str, ...]:
    """Every language of the data root's files (every split): what language ID answers among.

    Fixed by the data rather than by the directions on screen, so a system's off-target rate,
    and the cache entry behind it, stay the same when another direction is picked (the demo
    zoo's table answers among its six languages too).
    """
    root = data_root()
    if not root.is_dir():
        return ()
    sets = (_load_set(str(f), f.stat().st_mtime_ns) for f in sorted(root.rglob("*.jsonl")))
    return tuple(sorted({lang for s in sets for lang in (s.src_lang, s.tgt_lang)}))


# --------------------------------------------------------------------------- scores


# Sentences per generate() call in the dashboard: the default sentence count in one batch. Every
# session's generation shares the server's GIL, and for small models each decoding step is
# mostly Python, so fewer, larger batches serve concurrent sessions faster (two experts of the zoo
# translating in two threads: 2.62 s in batches of 16, 1.76 s in batches of 32; BENCHMARKS.md).
DASHBOARD_BATCH_SIZE = 32


def decoding_settings():
    """Greedy decoding as the paper's protocol, with MERGESCOPE_MAX_NEW_TOKENS as the cap when set."""
    from engine.translate.generate import DecodingSettings

    cap = get_settings().max_new_tokens
    if cap:
        return DecodingSettings(max_new_tokens=cap, batch_size=DASHBOARD_BATCH_SIZE)
    return DecodingSettings(batch_size=DASHBOARD_BATCH_SIZE)


def system_translator(system: System, models: "ModelCache", settings):
    """engine.translate's lazy translator over the shared model cache: the CLI's cache keys, and
    the model's lock held while generating (capture hooks on the same module must not interleave)."""
    from engine.translate.generate import LazyModelTranslator, prompt_signature

    class SharedModelTranslator(LazyModelTranslator):
        def translate(self, sources, src_lang, tgt_lang):
            loaded = models.get(system)
            with loaded.lock:
                return super().translate(sources, src_lang, tgt_lang)

    def load():
        loaded = models.get(system)
        return loaded.model, loaded.tokenizer

    prompt = prompt_signature(system_tokenizer(system))
    return SharedModelTranslator(system.identity, load, prompt, settings, default_device())


def systems_directions(system: System, sets: Sequence[ParallelSet]) -> list[ParallelSet]:
    """What a system is scored on: an expert on its own direction, everything else on every set."""
    if system.direction:
        own = [s for s in sets if s.direction == system.direction]
        return own or list(sets)
    return list(sets)


def evaluate_systems(systems: Sequence[System], sets: Sequence[ParallelSet], models: ModelCache,
                     progress: Progress | None = None) -> list:
    """EvaluationResult per system (cached per system and direction)."""
    from engine.translate.evaluate import evaluate, languages_in_play

    langs = tuple(sorted(set(data_languages()) | set(languages_in_play(sets))))
    settings = decoding_settings()
    results = []
    for i, system in enumerate(systems):
        own = systems_directions(system, sets)
        key = ("scores", system.identity, system.name, _data_key(own), langs, repr(settings.cache_parts()))

        def compute(i=i, system=system, own=own):
            if progress:  # reported only for work that runs: a page whose scores are in memory shows no progress
                progress(i, len(systems), f"scoring {system.name}")
            return _evaluate(evaluate, system, models, settings, own, langs)

        results.append(_MEMO.get_or_compute(key, compute))
    if progress:
        progress(len(systems), len(systems), "scores done")
    return results


def _evaluate(evaluate, system, models, settings, sets, langs):
    return evaluate(system_translator(system, models, settings), sets, system=system.name, languages=langs)


def score_rows(results: Sequence) -> list[dict]:
    """Long-form rows (system, direction, BLEU, chrF, off-target, signatures) of the paper table."""
    from engine.translate.report import long_rows

    return long_rows(results)


def sample_rows(results: Sequence, direction: str | None = None) -> list[dict]:
    """One row per (sentence, system): source, reference, output, sentence chrF, detected language."""
    rows = []
    for r in results:
        for d in r.directions:
            if direction and d.direction != direction:
                continue
            for i, s in enumerate(d.samples):
                rows.append({"direction": d.direction, "item": i, "system": r.system, "source": s.source,
                             "reference": s.reference, "output": s.output, "chrF": s.chrf,
                             "detected": s.detected, "target": d.tgt_lang,
                             "off_target": s.detected != d.tgt_lang})
    return rows


# --------------------------------------------------------------------------- captures and analyses


class Memo:
    """Finished results (analyses, figures) by content key, in process memory (thread-safe, least recently used out).

    The disk cache already makes warm views cheap; this makes them instant: a page switch
    re-reads no capture and recomputes no Gram matrix when the same view was shown before.
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, object] = OrderedDict()

    def get_or_compute(self, key: tuple, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # outside the lock: a slow analysis must not block other sessions' views
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


_MEMO = Memo()


def clear_memo() -> None:
    """Forget in-memory analyses (as a fresh server process would); the disk cache stays."""
    with _MEMO._lock:
        _MEMO._items.clear()


def _data_key(sets: Sequence[ParallelSet]) -> tuple:
    return tuple(s.content_hash() for s in sets)


@functools.lru_cache(maxsize=64)
def _tokenizer_for(identity: str, folder: str):

    return load_tokenizer(open_checkpoint(folder))


def system_tokenizer(system: System):
    """The tokenizer a system uses, without loading its weights (a merge uses its base's, or the
    recipe's tokenizer_source)."""
    if not system.is_merge:
        return _tokenizer_for(system.identity, str(system.checkpoint.path))
    recipe = system.recipe
    source = recipe.tokenizer_source if recipe.tokenizer_source not in (None, "base") else recipe.base_model
    source = source or recipe.referenced_models()[0]
    return _tokenizer_for(system.identity, source)


def capture_system(system: System, pairs: ParallelSet, models: ModelCache, progress: Progress | None = None):
    """Span statistics of one system on one parallel set: from the cache, else captured (and
    cached). The model is loaded or merged only on a miss."""
    import cache
    from engine.activations import Capture, CaptureSettings, capture_cached, capture_key

    settings = CaptureSettings()
    key = capture_key(system.identity, system_tokenizer(system), pairs, settings)
    entry = cache.get_store().get(key)
    if entry is not None:
        return Capture.from_entry(entry)
    loaded = models.get(system)
    step = (lambda done, total: progress(done, total, f"capturing {system.name} on {pairs.direction}")) if progress else None
    with loaded.lock:  # hooks are registered on the shared module: one capture at a time per model
        return capture_cached(loaded.model, loaded.tokenizer, pairs, system.identity, settings, progress=step)


def pooled_hidden(system: System, sets: Sequence[ParallelSet], span: str, models: ModelCache,
                  progress: Progress | None = None) -> np.ndarray:
    """Span-pooled representations, sentences of every set stacked: (layers + 1, n, d_model)."""
    if span not in SPANS:
        raise DataError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    parts = [capture_system(system, s, models, progress).hidden[span].numpy() for s in sets]
    return np.concatenate(parts, axis=1)


def cka_pair(a: System, b: System, sets: Sequence[ParallelSet], span: str, models: ModelCache,
             debiased: bool = False, progress: Progress | None = None):
    """The L × L CKA matrix of two systems (rows: layers of a, columns: layers of b; 0 = embeddings)."""
    from engine.cka import cka_matrix

    if not sets:
        raise DataError("CKA needs parallel data; pick at least one direction")

    def compute():
        ha = pooled_hidden(a, sets, span, models, progress)
        hb = ha if a.identity == b.identity else pooled_hidden(b, sets, span, models, progress)
        directions = "+".join(s.direction for s in sets)
        return cka_matrix(ha, hb, debiased=debiased, span=f"{span}|data:{directions}", labels=(a.name, b.name))

    key = ("cka", a.identity, b.identity, a.name, b.name, _data_key(sets), span, debiased)
    return _MEMO.get_or_compute(key, compute)


@dataclass
class LanguageRates:
    """Activation rates per language condition: (layers, d_mlp, languages), with what produced them."""

    rates: np.ndarray
    languages: tuple[str, ...]
    span: str
    tokens: dict[str, int]


def language_rates(system: System, sets: Sequence[ParallelSet], span: str, models: ModelCache,
                   progress: Progress | None = None) -> LanguageRates:
    """p = active tokens / span tokens per block, neuron and language of the span's text, pooled over
    every set whose `span` is in that language (e.g. span 'target' on En→X sets: one condition per X)."""
    from engine.activations import language_rates as pool

    if span not in SPANS:
        raise DataError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    captures = [capture_system(system, pairs, models, progress) for pairs in sets]
    languages, rates = pool(captures, span)
    if len(languages) < 2:
        raise DataError(
            f"neuron selectivity compares languages, but the {span} spans of the chosen directions are all "
            f"{', '.join(languages)}; pick directions with different {span} languages"
        )
    tokens = {lang: sum(int(c.tokens[span].sum()) for c in captures if c.languages[span] == lang) for lang in languages}
    return LanguageRates(rates.numpy(), languages, span, tokens)


@dataclass
class NeuronReport:
    """Everything the Neurons page draws for one fine-tune against the base."""

    base: object  # LapeResult
    finetune: object  # LapeResult
    comparison: object  # SelectionComparison
    nua: object  # NUAResult
    histograms: object  # NeuronHistograms of the fine-tune
    base_histograms: object
    languages: tuple[str, ...]


def neuron_report(base: System, finetune: System, sets: Sequence[ParallelSet], span: str, settings,
                  models: ModelCache, progress: Progress | None = None) -> NeuronReport:
    """LAPE on base and fine-tune, their per-layer comparison, NUA and histograms."""
    key = ("neurons", base.identity, finetune.identity, _data_key(sets), span, settings)
    return _MEMO.get_or_compute(key, lambda: _neuron_report(base, finetune, sets, span, settings, models, progress))


def _neuron_report(base, finetune, sets, span, settings, models, progress) -> NeuronReport:
    from engine.neurons import compare_selections, neuron_histograms, neuron_usage_alignment, select_language_neurons

    rb = language_rates(base, sets, span, models, progress)
    rf = language_rates(finetune, sets, span, models, progress)
    if rb.rates.shape != rf.rates.shape:
        raise DataError(f"{base.name} and {finetune.name} have different MLP shapes; neurons cannot be matched")
    lb = select_language_neurons(rb.rates, rb.languages, settings, span=span)
    lf = select_language_neurons(rf.rates, rf.languages, settings, span=span)
    return NeuronReport(lb, lf, compare_selections(lb, lf), neuron_usage_alignment(rb.rates, rf.rates, span=span),
                        neuron_histograms(rf.rates), neuron_histograms(rb.rates), rb.languages)


# --------------------------------------------------------------------------- background work


class Prefetcher:
    """Computes, in one background thread, results a user is about to ask for (the checkpoints'
    scores and captures while they are still choosing a merge), so the Merge click only waits
    for the merge itself. Each job runs once; failures are logged, and the foreground simply
    computes (or reports) them again when asked. Thread-safe."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergescope-prefetch")
        self._lock = threading.Lock()
        self._seen: set[tuple] = set()

    def submit(self, key: tuple, job: Callable[[], object]) -> bool:
        """Queue `job` unless a job with `key` was queued before; True when queued now."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)

        def run():
            try:
                job()
            except Exception:  # the foreground will meet the same error and show it
                log.warning("prefetch %s failed", key[0], exc_info=True)

        self._pool.submit(run)
        return True


def prefetch_checkpoints(prefetcher: Prefetcher, systems: Sequence[System], sets: Sequence[ParallelSet],
                         models: ModelCache) -> None:
    """Queue scores and captures of checkpoint systems on `sets` (merges are left to the click)."""
    checkpoints_only = [s for s in systems if not s.is_merge]
    if not checkpoints_only or not sets:
        return
    key = ("scores", tuple(s.identity for s in checkpoints_only), _data_key(sets), repr(decoding_settings().cache_parts()))
    prefetcher.submit(key, lambda: evaluate_systems(checkpoints_only, sets, models))
    for system in checkpoints_only:
        prefetcher.submit(("capture", system.identity, _data_key(sets)),
                          lambda system=system: [capture_system(system, pairs, models) for pairs in sets])


# --------------------------------------------------------------------------- sweep curves


def sweep_values(method: str, param: str) -> list[float]:
    """The paper's grid for one parameter of a method (arXiv 2604.02881), else 0.1 … 1.0."""
    from engine.sweep.grid import PAPER_GRIDS

    values = PAPER_GRIDS.get(method, {}).get(param)
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    return [round(0.1 * i, 1) for i in range(1, 11)]


def sweep_curve(base: str, experts: Sequence[str], method: str, params: dict, param: str, values: Sequence[float],
                sets: Sequence[ParallelSet], models: ModelCache, progress: Progress | None = None) -> list[dict]:
    """Score the merge at each value of one parameter, the others held at `params`.

    One row per (value, direction and 'avg'): what the Scores page plots as a sweep curve. Each
    point is a recipe with its own content hash, so points already scored (by any session or the
    sweep CLI's identical recipes) come from the cache and are never merged again.
    """
    rows = []
    for i, value in enumerate(values):
        if progress:
            progress(i, len(values), f"{method} {param}={value:g}")
        system = merge_system(build_recipe(base, experts, method, {**params, param: value}),
                              name=f"{method} {param}={value:g}")
        for row in score_rows(evaluate_systems([system], sets, models)):
            rows.append({**row, "method": method, "param": param, "value": value})
    if progress:
        progress(len(values), len(values), "sweep done")
    return rows
