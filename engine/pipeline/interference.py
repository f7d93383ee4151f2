"""The interference profile of the picked base and experts, as the dashboard and CLI ask for it:
weight-space measures from the checkpoints (no data), and the experts' LAPE neuron overlap from
their captures on the chosen directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import DataError
from engine.interference import (
    InterferenceProfile,
    InterferenceSettings,
    interference_profile,
    neuron_set_overlap,
    with_neuron_overlap,
)
from engine.parallel import ParallelSet
from engine.pipeline.analyses import language_rates
from engine.pipeline.data import data_key
from engine.pipeline.memo import MEMO
from engine.pipeline.models import ModelCache
from engine.pipeline.progress import Progress
from engine.pipeline.systems import System


def _checkpoints_only(systems: Sequence[System]) -> None:
    for s in systems:
        if s.checkpoint is None:
            raise DataError(f"{s.name}: interference is read from checkpoints on disk, not from a merge")


def weight_interference(
    base: System,
    experts: Sequence[System],
    settings: InterferenceSettings = InterferenceSettings(),
    progress: Progress | None = None,
) -> InterferenceProfile:
    """The weight-space profile of `experts` against `base` (cached on disk by fingerprints)."""
    _checkpoints_only([base, *experts])
    key = ("interference", base.identity, tuple((e.identity, e.name) for e in experts), settings)
    return MEMO.get_or_compute(
        key,
        lambda: interference_profile(
            base.checkpoint, [e.checkpoint for e in experts], settings, [e.name for e in experts], progress
        ),
    )


def expert_language(expert: System) -> tuple[str, str]:
    """(language, span) an expert specialises in: X on the target span for En→X, X on the source span for X→En."""
    if not expert.direction or "-" not in expert.direction:
        raise DataError(f"{expert.name}: no translation direction known for this checkpoint")
    source, target = expert.direction.split("-", 1)
    return (target, "target") if source == "en" else (source, "source")


def expert_neuron_overlap(
    experts: Sequence[System],
    sets: Sequence[ParallelSet],
    lape_settings,
    models: ModelCache,
    progress: Progress | None = None,
) -> np.ndarray:
    """(blocks, n, n): Jaccard overlap of the gate neurons each expert's LAPE selection assigns to its own
    language (rates from its captures on `sets`, on the span where that language is written)."""
    from engine.neurons import select_language_neurons

    def compute() -> np.ndarray:
        per_expert = []
        for expert in experts:
            language, span = expert_language(expert)
            rates = language_rates(expert, sets, span, models, progress)
            if language not in rates.languages:
                raise DataError(
                    f"{expert.name} translates {expert.direction}, but the chosen directions have no {span} text "
                    f"in {language}; add a direction with {language} on that side"
                )
            lape = select_language_neurons(rates.rates, rates.languages, lape_settings, span=span)
            per_expert.append([layer[language] for layer in lape.neurons])
        return neuron_set_overlap(per_expert)

    key = ("interference-neurons", tuple(e.identity for e in experts), data_key(sets), lape_settings)
    return MEMO.get_or_compute(key, compute)


def interference_with_neurons(
    base: System,
    experts: Sequence[System],
    sets: Sequence[ParallelSet],
    lape_settings,
    models: ModelCache,
    settings: InterferenceSettings = InterferenceSettings(),
    progress: Progress | None = None,
) -> InterferenceProfile:
    """weight_interference with the experts' LAPE neuron overlap joined (and in the score)."""
    profile = weight_interference(base, experts, settings, progress)
    overlap = expert_neuron_overlap(experts, sets, lape_settings, models, progress)
    return with_neuron_overlap(profile, overlap, lape_settings.signature())
