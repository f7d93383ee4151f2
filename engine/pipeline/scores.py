"""Translation scores of systems on parallel sets (cached per system and direction)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.device import default_device
from engine.parallel import ParallelSet
from engine.pipeline.data import data_key, data_languages
from engine.pipeline.memo import MEMO
from engine.pipeline.models import ModelCache
from engine.pipeline.progress import Progress
from engine.pipeline.systems import System, system_tokenizer
from engine.settings import ZOO_DIR, ZOO_MAX_NEW_TOKENS, get_settings

# Sentences per generate() call in the dashboard: the default sentence count in one batch. Every
# session's generation shares the server's GIL, and for small models each decoding step is
# mostly Python, so fewer, larger batches serve concurrent sessions faster (two experts of the zoo
# translating in two threads: 2.62 s in batches of 16, 1.76 s in batches of 32; BENCHMARKS.md).
DASHBOARD_BATCH_SIZE = 32


def decoding_settings():
    """Greedy decoding as the paper's protocol: MERGESCOPE_MAX_NEW_TOKENS as the cap when set, else
    the demo zoo's short cap on the zoo's data, else the paper's 512 tokens."""
    from engine.translate.generate import DecodingSettings

    settings = get_settings()
    cap = settings.max_new_tokens
    if cap is None and settings.data_dir == (ZOO_DIR / "data").resolve():
        cap = ZOO_MAX_NEW_TOKENS
    if cap:
        return DecodingSettings(max_new_tokens=cap, batch_size=DASHBOARD_BATCH_SIZE)
    return DecodingSettings(batch_size=DASHBOARD_BATCH_SIZE)


def system_translator(system: System, models: ModelCache, settings):
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


def systems_directions(
    system: System, sets: Sequence[ParallelSet], experts_everywhere: bool = True
) -> list[ParallelSet]:
    """What a system is scored on: every set, as the paper scores each expert on every direction
    of its group (how an En→de expert behaves when asked for Russian); with `experts_everywhere`
    off, an expert on its own direction only (when that direction is among the sets)."""
    if system.direction and not experts_everywhere:
        own = [s for s in sets if s.direction == system.direction]
        return own or list(sets)
    return list(sets)


def evaluate_systems(
    systems: Sequence[System],
    sets: Sequence[ParallelSet],
    models: ModelCache,
    progress: Progress | None = None,
    experts_everywhere: bool = True,
) -> list:
    """EvaluationResult per system (cached per system and direction); experts on every set unless
    `experts_everywhere` is off (then on their own direction)."""
    from engine.translate.evaluate import evaluate, languages_in_play

    langs = tuple(sorted(set(data_languages()) | set(languages_in_play(sets))))
    settings = decoding_settings()
    results = []
    for i, system in enumerate(systems):
        own = systems_directions(system, sets, experts_everywhere)
        key = ("scores", system.identity, system.name, data_key(own), langs, repr(settings.cache_parts()))

        def compute(i=i, system=system, own=own):
            if progress:  # reported only for work that runs: a page whose scores are in memory shows no progress
                progress(i, len(systems), f"scoring {system.name}")
            return _evaluate(evaluate, system, models, settings, own, langs)

        results.append(MEMO.get_or_compute(key, compute))
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
                rows.append(
                    {
                        "direction": d.direction,
                        "item": i,
                        "system": r.system,
                        "source": s.source,
                        "reference": s.reference,
                        "output": s.output,
                        "chrF": s.chrf,
                        "detected": s.detected,
                        "target": d.tgt_lang,
                        "off_target": s.detected != d.tgt_lang,
                    }
                )
    return rows
