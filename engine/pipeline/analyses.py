"""Captured span statistics of systems, and the analyses over them: CKA and neuron selectivity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import DataError
from engine.parallel import ParallelSet
from engine.pipeline.data import data_key
from engine.pipeline.memo import MEMO
from engine.pipeline.models import ModelCache
from engine.pipeline.progress import Progress
from engine.pipeline.systems import System, system_tokenizer
from engine.settings import cache_store

SPANS = ("source", "target")


def capture_system(
    system: System,
    pairs: ParallelSet,
    models: ModelCache,
    progress: Progress | None = None,
    final_norm: bool = False,
):
    """Span statistics of one system on one parallel set: from the cache, else captured (and
    cached). The model is loaded or merged only on a miss. `final_norm`: layer L after the final
    norm instead of the last block's raw output (engine.activations.CaptureSettings)."""
    from engine.activations import Capture, CaptureSettings, capture_cached, capture_key

    settings = CaptureSettings(final_norm=final_norm)
    key = capture_key(system.identity, system_tokenizer(system), pairs, settings)
    entry = cache_store().get(key)
    if entry is not None:
        return Capture.from_entry(entry)
    loaded = models.get(system)
    step = (
        (lambda done, total: progress(done, total, f"capturing {system.name} on {pairs.direction}"))
        if progress
        else None
    )
    with loaded.lock:  # hooks are registered on the shared module: one capture at a time per model
        return capture_cached(loaded.model, loaded.tokenizer, pairs, system.identity, settings, progress=step)


def pooled_hidden(
    system: System,
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    progress: Progress | None = None,
    final_norm: bool = False,
) -> np.ndarray:
    """Span-pooled representations, sentences of every set stacked: (layers + 1, n, d_model)."""
    if span not in SPANS:
        raise DataError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    parts = [capture_system(system, s, models, progress, final_norm).hidden[span].numpy() for s in sets]
    return np.concatenate(parts, axis=1)


def cka_pair(
    a: System,
    b: System,
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    debiased: bool = False,
    progress: Progress | None = None,
    final_norm: bool = False,
):
    """The L × L CKA matrix of two systems (rows: layers of a, columns: layers of b; 0 = embeddings;
    the last layer is the last block's raw output, or after the final norm with `final_norm`)."""
    from engine.cka import cka_matrix, last_layer_label

    if not sets:
        raise DataError("CKA needs parallel data; pick at least one direction")

    def compute():
        ha = pooled_hidden(a, sets, span, models, progress, final_norm)
        hb = ha if a.identity == b.identity else pooled_hidden(b, sets, span, models, progress, final_norm)
        directions = "+".join(s.direction for s in sets)
        label = f"{span}|last:{last_layer_label(final_norm)}|data:{directions}"
        return cka_matrix(ha, hb, debiased=debiased, span=label, labels=(a.name, b.name))

    key = ("cka", a.identity, b.identity, a.name, b.name, data_key(sets), span, debiased, final_norm)
    return MEMO.get_or_compute(key, compute)


@dataclass
class LanguageRates:
    """Activation rates per language condition: (layers, d_mlp, languages), with what produced them."""

    rates: np.ndarray
    languages: tuple[str, ...]
    span: str
    tokens: dict[str, int]


def language_rates(
    system: System, sets: Sequence[ParallelSet], span: str, models: ModelCache, progress: Progress | None = None
) -> LanguageRates:
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


def neuron_report(
    base: System,
    finetune: System,
    sets: Sequence[ParallelSet],
    span: str,
    settings,
    models: ModelCache,
    progress: Progress | None = None,
) -> NeuronReport:
    """LAPE on base and fine-tune, their per-layer comparison, NUA and histograms."""
    key = ("neurons", base.identity, finetune.identity, data_key(sets), span, settings)
    return MEMO.get_or_compute(key, lambda: _neuron_report(base, finetune, sets, span, settings, models, progress))


def _neuron_report(base, finetune, sets, span, settings, models, progress) -> NeuronReport:
    from engine.neurons import compare_selections, neuron_histograms, neuron_usage_alignment, select_language_neurons

    rb = language_rates(base, sets, span, models, progress)
    rf = language_rates(finetune, sets, span, models, progress)
    if rb.rates.shape != rf.rates.shape:
        raise DataError(f"{base.name} and {finetune.name} have different MLP shapes; neurons cannot be matched")
    lb = select_language_neurons(rb.rates, rb.languages, settings, span=span)
    lf = select_language_neurons(rf.rates, rf.languages, settings, span=span)
    return NeuronReport(
        lb,
        lf,
        compare_selections(lb, lf),
        neuron_usage_alignment(rb.rates, rf.rates, span=span),
        neuron_histograms(rf.rates),
        neuron_histograms(rb.rates),
        rb.languages,
    )
