"""Score a translator on parallel sets: sacreBLEU scores, off-target rates and samples, cached.

The protocol of arXiv 2604.02881 (greedy, first line, sacreBLEU BLEU and chrF per direction and
averaged), plus chrF++ and off-target rates. sacreBLEU: Post (WMT 2018).

A direction's result is cached under (model identity and decoding settings from the translator,
the data's content hash, the languages in play, a scoring version), so re-opening a view or
resuming a sweep re-uses finished work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean

from engine.errors import DataError
from engine.parallel import ParallelSet
from engine.prompts import language_name
from engine.settings import cache_store
from engine.translate.generate import Translator, decoding_signature
from engine.translate.langid import OffTargetRates, check_languages, detect, off_target_rates
from engine.translate.scores import CorpusScores, corpus_scores, sentence_chrf

log = logging.getLogger(__name__)

# Bump when what a cached result holds, or how it is scored, changes.
SCORING_VERSION = "translate-2"
AVERAGE = "avg"
METRICS = ("bleu", "chrf", "chrfpp", "off_target", "off_target_ref", "reference_miss")

Progress = Callable[[int, int, str], None]  # (done, total, message)


@dataclass(frozen=True)
class Sample:
    """One sentence's output with its sentence chrF and detected languages."""

    source: str
    reference: str
    output: str
    chrf: float
    detected: str  # language ID of the output, among the languages in play
    reference_detected: str  # language ID of the reference, same identifier


@dataclass(frozen=True)
class DirectionResult:
    """Scores, off-target rates and samples of one system on one direction."""

    src_lang: str
    tgt_lang: str
    data_hash: str
    languages: tuple[str, ...]  # the languages language ID chose among
    scores: CorpusScores
    rates: OffTargetRates
    samples: tuple[Sample, ...]
    decoding: str = ""  # decoding signature of the outputs (engine.translate.generate.decoding_signature)

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    def metric(self, name: str) -> float:
        return {**self.scores.to_dict(), **self.rates.to_dict()}[name]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DirectionResult:
        return cls(
            src_lang=d["src_lang"],
            tgt_lang=d["tgt_lang"],
            data_hash=d["data_hash"],
            languages=tuple(d["languages"]),
            scores=CorpusScores(**d["scores"]),
            rates=OffTargetRates(**d["rates"]),
            samples=tuple(Sample(**s) for s in d["samples"]),
            decoding=d.get("decoding", ""),
        )


@dataclass(frozen=True)
class EvaluationResult:
    """One system over several directions; `average` is the unweighted mean over directions."""

    system: str  # display label (checkpoint name, "TIES density=0.5 weight=1.0", ...)
    identity: str  # fingerprint or recipe hash
    directions: tuple[DirectionResult, ...] = field(default_factory=tuple)

    def average(self) -> dict[str, float]:
        return {m: fmean(d.metric(m) for d in self.directions) for m in METRICS}

    def metric(self, name: str, direction: str = AVERAGE) -> float:
        if direction == AVERAGE:
            return self.average()[name]
        for d in self.directions:
            if d.direction == direction:
                return d.metric(name)
        raise KeyError(direction)

    def to_dict(self) -> dict:
        return {
            "system": self.system,
            "identity": self.identity,
            "average": self.average(),
            "directions": [d.to_dict() for d in self.directions],
        }


def languages_in_play(sets: Iterable[ParallelSet]) -> tuple[str, ...]:
    """Every source and target language of the sets: what language ID may answer."""
    return tuple(sorted({lang for s in sets for lang in (s.src_lang, s.tgt_lang)}))


def validate_sets(sets: Sequence[ParallelSet], languages: Iterable[str] | None = None) -> tuple[str, ...]:
    """Checks that need no model, run before any work: languages named by the prompt and known to
    language ID, no two sets for one direction. Returns the languages in play."""
    if not sets:
        raise DataError("no parallel data to evaluate on")
    seen: dict[str, str] = {}
    for s in sets:
        language_name(s.src_lang), language_name(s.tgt_lang)
        if s.direction in seen:
            raise DataError(f"two data sets for {s.direction}: {seen[s.direction] or '?'} and {s.name or '?'}")
        seen[s.direction] = s.name
    langs = tuple(languages) if languages is not None else languages_in_play(sets)
    missing = {lang for s in sets for lang in (s.src_lang, s.tgt_lang)} - set(langs)
    if missing:
        raise DataError(f"languages in play must include every data language; missing {', '.join(sorted(missing))}")
    return check_languages(langs)


def score_outputs(
    pairs: ParallelSet, outputs: Sequence[str], languages: Sequence[str], decoding: str = ""
) -> DirectionResult:
    """Score given outputs of one direction (no model involved); `decoding` says how they were made."""
    if len(outputs) != len(pairs):
        raise DataError(f"{pairs.name or pairs.direction}: {len(outputs)} outputs for {len(pairs)} pairs")
    detected = detect(outputs, languages)
    reference_detected = detect(pairs.targets, languages)
    chrfs = sentence_chrf(outputs, pairs.targets)
    rows = zip(pairs.sources, pairs.targets, outputs, chrfs, detected, reference_detected)
    samples = tuple(Sample(*row) for row in rows)
    return DirectionResult(
        src_lang=pairs.src_lang,
        tgt_lang=pairs.tgt_lang,
        data_hash=pairs.content_hash(),
        languages=tuple(languages),
        scores=corpus_scores(outputs, pairs.targets, pairs.tgt_lang),
        rates=off_target_rates(detected, reference_detected, pairs.tgt_lang),
        samples=samples,
        decoding=decoding,
    )


def direction_cache_key(translator: Translator, pairs: ParallelSet, languages: Sequence[str]) -> str:
    import cache

    return cache.make_key(
        "translation",
        **translator.cache_parts(),
        data=pairs.content_hash(),
        languages=list(languages),
        scoring=SCORING_VERSION,
    )


def evaluate_direction(
    translator: Translator, pairs: ParallelSet, languages: Sequence[str] | None = None, use_cache: bool = True
) -> DirectionResult:
    """Translate and score one direction, through the cache unless use_cache is False."""
    langs = validate_sets([pairs], languages)

    def compute() -> DirectionResult:
        start = time.perf_counter()
        outputs = translator.translate(pairs.sources, pairs.src_lang, pairs.tgt_lang)
        log.info(
            "translated %s (%d sentences) with %s in %.2f s",
            pairs.direction,
            len(pairs),
            translator.identity[:16],
            time.perf_counter() - start,
        )
        return score_outputs(pairs, outputs, langs, decoding_signature(translator.cache_parts()))

    if not use_cache:
        return compute()
    import cache

    entry = cache_store().get_or_compute(
        direction_cache_key(translator, pairs, langs),
        lambda: cache.Entry(tensors={}, meta=compute().to_dict()),
        description=f"translation {pairs.direction} by {translator.identity[:16]}",
    )
    return DirectionResult.from_dict(entry.meta)


def evaluate(
    translator: Translator,
    sets: Sequence[ParallelSet],
    system: str = "",
    languages: Sequence[str] | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate one system on every set; all input checks happen before the first translation."""
    langs = validate_sets(sets, languages)
    results = []
    for i, pairs in enumerate(sets):
        if progress:
            progress(i, len(sets), f"{system or translator.identity[:16]}: {pairs.direction}")
        results.append(evaluate_direction(translator, pairs, langs, use_cache))
    if progress:
        progress(len(sets), len(sets), f"{system or translator.identity[:16]}: done")
    return EvaluationResult(
        system=system or translator.identity, identity=translator.identity, directions=tuple(results)
    )
