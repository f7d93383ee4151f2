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


def capture_system(system: System, pairs: ParallelSet, models: ModelCache, progress: Progress | None = None):
    """Span statistics of one system on one parallel set: from the cache, else captured (and
    cached). The model is loaded or merged only on a miss."""
    from engine.activations import Capture, CaptureSettings, capture_cached, capture_key

    settings = CaptureSettings()
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
    system: System, sets: Sequence[ParallelSet], span: str, models: ModelCache, progress: Progress | None = None
) -> np.ndarray:
    """Span-pooled representations, sentences of every set stacked: (layers + 1, n, d_model)."""
    if span not in SPANS:
        raise DataError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    parts = [capture_system(system, s, models, progress).hidden[span].numpy() for s in sets]
    return np.concatenate(parts, axis=1)


def cka_pair(
    a: System,
    b: System,
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    debiased: bool = False,
    progress: Progress | None = None,
):
    """The L × L CKA matrix of two systems (rows: layers of a, columns: layers of b; 0 = embeddings)."""
    from engine.cka import cka_matrix

    if not sets:
        raise DataError("CKA needs parallel data; pick at least one direction")

    def compute():
        ha = pooled_hidden(a, sets, span, models, progress)
        hb = ha if a.identity == b.identity else pooled_hidden(b, sets, span, models, progress)
        directions = "+".join(s.direction for s in sets)
        return cka_matrix(ha, hb, debiased=debiased, span=f"{span}|data:{directions}", labels=(a.name, b.name))

    key = ("cka", a.identity, b.identity, a.name, b.name, data_key(sets), span, debiased)
    return MEMO.get_or_compute(key, compute)


@dataclass
class LanguageRates:
    """Activation rates per language condition: (layers, d_mlp, conditions), with what produced them."""

    rates: np.ndarray
    languages: tuple[str, ...]  # the conditions' names
    span: str
    conditions: str  # how data sets became conditions: "dataset" or "span"


def language_rates(
    system: System,
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    progress: Progress | None = None,
    conditions: str = "dataset",
) -> LanguageRates:
    """p = active tokens / span tokens per block, neuron and language condition. By default a
    condition is a data set's non-English language (the paper's), so En→X source spans compare
    hi, bn, ... although all are English; `conditions="span"` groups by the span's own language."""
    from engine.activations import condition_labels, condition_rates

    if span not in SPANS:
        raise DataError(f"span must be one of {', '.join(SPANS)}, got {span!r}")
    labels = condition_labels([(s.src_lang, s.tgt_lang) for s in sets], span, conditions)
    if len(set(labels)) < 2:
        by = "data set" if conditions == "dataset" else f"{span} language"
        raise DataError(
            f"neuron selectivity compares language conditions, but grouped by {by} the chosen directions "
            f"({', '.join(s.direction for s in sets)}) give only {', '.join(sorted(set(labels)))}; "
            "pick directions of more languages"
            + ("" if conditions == "dataset" else ", or group conditions by data set")
        )
    captures = [capture_system(system, pairs, models, progress) for pairs in sets]
    languages, rates = condition_rates(captures, labels, span)
    return LanguageRates(rates.numpy(), languages, span, conditions)


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
    conditions: str


def neuron_report(
    base: System,
    finetune: System,
    sets: Sequence[ParallelSet],
    span: str,
    settings,
    models: ModelCache,
    progress: Progress | None = None,
    conditions: str = "dataset",
    nua_mode: str = "rate",
) -> NeuronReport:
    """LAPE on base and fine-tune, their per-layer comparison, NUA and histograms."""
    key = ("neurons", base.identity, finetune.identity, data_key(sets), span, settings, conditions, nua_mode)
    return MEMO.get_or_compute(
        key, lambda: _neuron_report(base, finetune, sets, span, settings, models, progress, conditions, nua_mode)
    )


def _neuron_report(base, finetune, sets, span, settings, models, progress, conditions, nua_mode) -> NeuronReport:
    from engine.neurons import compare_selections, neuron_histograms, select_language_neurons
    from engine.nua import neuron_usage_alignment

    rb = language_rates(base, sets, span, models, progress, conditions)
    rf = language_rates(finetune, sets, span, models, progress, conditions)
    if rb.rates.shape != rf.rates.shape:
        raise DataError(f"{base.name} and {finetune.name} have different MLP shapes; neurons cannot be matched")
    lb = select_language_neurons(rb.rates, rb.languages, settings, span=span, conditions=conditions)
    lf = select_language_neurons(rf.rates, rf.languages, settings, span=span, conditions=conditions)
    return NeuronReport(
        lb,
        lf,
        compare_selections(lb, lf),
        neuron_usage_alignment(rb.rates, rf.rates, span=span, mode=nua_mode, conditions=conditions),
        neuron_histograms(rf.rates),
        neuron_histograms(rb.rates),
        rb.languages,
        conditions,
    )


def nua_groups(
    systems: Sequence[System],
    base: System,
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    progress: Progress | None = None,
    conditions: str = "dataset",
    mode: str = "rate",
):
    """NUA of every pair of systems, base–fine-tune pairs against fine-tune–fine-tune pairs (NUAGroups)."""
    from engine import nua

    def compute():
        rates = {s.name: language_rates(s, sets, span, models, progress, conditions).rates for s in systems}
        shapes = {name: r.shape for name, r in rates.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"the systems' MLPs differ in shape {shapes}; neurons cannot be matched")
        return nua.nua_groups(rates, base.name, span=span, mode=mode, conditions=conditions)

    key = (
        "nua_groups",
        tuple((s.name, s.identity) for s in systems),
        base.name,
        data_key(sets),
        span,
        conditions,
        mode,
    )
    return MEMO.get_or_compute(key, compute)


def span_overlap(
    system: System, sets: Sequence[ParallelSet], settings, models: ModelCache, progress: Progress | None = None
):
    """One system's LAPE neurons on the source span against the target span, per layer and condition.
    Conditions are the data sets' (the paper's): grouped by span language the spans' conditions differ."""
    from engine.neurons import compare_spans, select_language_neurons

    def compute():
        by_span = {}
        for span in SPANS:
            r = language_rates(system, sets, span, models, progress, "dataset")
            by_span[span] = select_language_neurons(r.rates, r.languages, settings, span=span, conditions="dataset")
        return compare_spans(by_span["source"], by_span["target"])

    key = ("span_overlap", system.identity, data_key(sets), settings)
    return MEMO.get_or_compute(key, compute)


def subspace_geometry(
    systems: Sequence[System],
    sets: Sequence[ParallelSet],
    span: str,
    models: ModelCache,
    k: int = 64,
    progress: Progress | None = None,
):
    """Principal angles and subspace distances of every pair of systems per layer (SubspaceGeometry),
    over the span-pooled representations of every chosen set stacked (the paper's combined data)."""
    from engine import geometry

    if len(systems) < 2:
        raise DataError("the geometry compares systems; choose at least two")

    def compute():
        hidden = {s.name: pooled_hidden(s, sets, span, models, progress) for s in systems}
        shapes = {name: h.shape for name, h in hidden.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"the systems' representations differ in shape {shapes}; subspaces cannot be compared")
        return geometry.subspace_geometry(hidden, k=k, span=f"{span}|data:{'+'.join(s.direction for s in sets)}")

    key = ("geometry", tuple((s.name, s.identity) for s in systems), data_key(sets), span, k)
    return MEMO.get_or_compute(key, compute)
