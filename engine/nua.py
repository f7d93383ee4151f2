"""Neuron-usage alignment (NUA): how alike two models use their MLP neurons, layer by layer.

Follows the MergeScope paper's code (Gain et al., arXiv 2604.02881; babangain/mt-model-merging,
analysis/nua.py with `--normalize rate`, summarised as in analysis/draw_nua.py). Each model's
usage vector of a layer is its neurons' activation rates averaged over the language conditions
with equal weight, one value per neuron; NUA is the cosine of two models' vectors. Over a set of
models every pair is compared, and the pairs of the base with a fine-tune are averaged apart from
the pairs of two fine-tunes, per layer and over the lower, middle and upper thirds of the stack.

The `concat` mode (an option) keeps every condition: a layer's vector is its neurons' rates for
all conditions side by side, so two models that use a neuron for different languages differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np

NUA_VERSION = "2"
NUA_MODES = {
    "rate": "rates averaged over conditions (the paper's nua.py --normalize rate)",
    "concat": "rates of all conditions side by side",
}


def usage_vectors(rates, mode: str = "rate") -> np.ndarray:
    """(layers, features) usage vectors from rates of shape (layers, neurons, conditions)."""
    if mode not in NUA_MODES:
        raise ValueError(f"unknown NUA mode {mode!r}; choose from {', '.join(NUA_MODES)}")
    rates = np.asarray(rates, dtype=np.float64)
    if rates.ndim != 3:
        raise ValueError(f"activation rates must be (layers, neurons, conditions), got shape {rates.shape}")
    if mode == "rate":
        return rates.mean(axis=-1)  # (layers, neurons)
    return rates.reshape(rates.shape[0], -1)  # (layers, neurons · conditions)


def thirds_of(n_layers: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """[start, end) layer ranges of the lower, middle and upper thirds; earlier thirds take the
    extra layer (36 layers: 0-11, 12-23, 24-35, the paper's bands)."""
    bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(n_layers), 3)])
    return tuple((int(bounds[i]), int(bounds[i + 1])) for i in range(3))


def _band_means(per_layer: np.ndarray, thirds) -> tuple[float, float, float]:
    return tuple(
        float(np.nanmean(per_layer[s:e])) if np.isfinite(per_layer[s:e]).any() else float("nan") for s, e in thirds
    )


@dataclass
class NUAResult:
    """NUA of two models: cosine of their per-layer usage vectors."""

    per_layer: np.ndarray  # (layers,)
    lower: float
    middle: float
    upper: float
    mean: float
    thirds: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [start, end) layer ranges
    signature: str


def _signature(n_layers: int, mode: str, span: str, conditions: str) -> str:
    sizes = "/".join(str(e - s) for s, e in thirds_of(n_layers))
    sig = f"nua|{mode}|cosine|thirds:{sizes}|v:{NUA_VERSION}" + (f"|span:{span}" if span else "")
    return sig + (f"|conditions:{conditions}" if conditions else "")


def neuron_usage_alignment(rates_a, rates_b, span: str = "", mode: str = "rate", conditions: str = "") -> NUAResult:
    """NUA per layer and averaged over the lower / middle / upper thirds of the stack.

    Rates are (layers, neurons, conditions); `span` and `conditions` only label the result. A layer where a model never fires gives NaN (its
    cosine is undefined; the paper's code would clamp the norm and report 0).
    """
    a, b = usage_vectors(rates_a, mode), usage_vectors(rates_b, mode)
    if a.shape != b.shape:
        raise ValueError(
            f"activation rates of shapes {np.shape(rates_a)} and {np.shape(rates_b)} cannot be aligned neuron by neuron"
        )
    if a.shape[0] < 3:
        raise ValueError(f"NUA averages thirds of the stack and needs at least 3 layers, got {a.shape[0]}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_layer = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), np.nan)
    thirds = thirds_of(a.shape[0])
    lower, middle, upper = _band_means(per_layer, thirds)
    mean = float(np.nanmean(per_layer)) if np.isfinite(per_layer).any() else float("nan")
    return NUAResult(per_layer, lower, middle, upper, mean, thirds, _signature(a.shape[0], mode, span, conditions))


@dataclass
class NUAGroups:
    """NUA of every pair of models, and the base–fine-tune pairs against the fine-tune–fine-tune pairs."""

    names: tuple[str, ...]
    base: str
    pairs: dict[tuple[str, str], NUAResult]  # (a, b) in the order of `names`
    base_finetune: np.ndarray  # (layers,): mean over the base's pairs with each fine-tune
    finetune_finetune: np.ndarray  # (layers,): mean over pairs of two fine-tunes (NaN with one fine-tune)
    base_finetune_thirds: tuple[float, float, float]
    finetune_finetune_thirds: tuple[float, float, float]
    thirds: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    signature: str


def nua_groups(
    rates: Mapping[str, np.ndarray], base: str, span: str = "", mode: str = "rate", conditions: str = ""
) -> NUAGroups:
    """NUA of all model pairs; `rates` maps model name -> (layers, neurons, conditions), base among them."""
    names = tuple(rates)
    if base not in rates:
        raise ValueError(f"the base {base!r} is not among the models {', '.join(names)}")
    if len(names) < 2:
        raise ValueError("NUA compares models; give at least two")
    pairs = {
        (a, b): neuron_usage_alignment(rates[a], rates[b], span, mode, conditions) for a, b in combinations(names, 2)
    }
    n_layers = next(iter(pairs.values())).per_layer.shape[0]
    with_base = [r.per_layer for (a, b), r in pairs.items() if base in (a, b)]
    between = [r.per_layer for (a, b), r in pairs.items() if base not in (a, b)]
    # Both averages are plain means over pairs per layer, as draw_nua.py's layerwise_avg.
    base_ft = np.mean(with_base, axis=0)
    ft_ft = np.mean(between, axis=0) if between else np.full(n_layers, np.nan)
    thirds = thirds_of(n_layers)
    return NUAGroups(
        names,
        base,
        pairs,
        base_ft,
        ft_ft,
        _band_means(base_ft, thirds),
        _band_means(ft_ft, thirds),
        thirds,
        _signature(n_layers, mode, span, conditions),
    )
