"""Language-specific neurons (LAPE) and how two selections of them overlap.

LAPE, "language activation probability entropy" (Tang et al., 2024, "Language-Specific Neurons:
The Key to Multilingual Capabilities in Large Language Models"): a neuron's activation
probability p for language k is the share of that language's tokens on which the gated MLP's
act(gate_proj(x)) is positive. Normalising p over languages and taking the entropy scores how
language-specific the neuron is; the lowest-entropy `top_rate` of all neurons are kept and each
is assigned to every language whose p clears the `activation_bar` quantile of all p.

The base-vs-fine-tune comparison and the source-span vs target-span overlap follow the MergeScope
paper (Gain et al., arXiv 2604.02881; babangain/mt-model-merging, analysis/compare_base_vs_ft.py
and analysis/src/indic_en_compare_src_tgt.py), which reads p from the source or target span of
teacher-forced pairs, one language condition per data set. NUA is in engine/nua.py.

Everything here takes plain arrays of counts or rates (layers, neurons, languages) and returns
dataclasses carrying a settings signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LAPE_VERSION = "1"


@dataclass(frozen=True)
class LapeSettings:
    """LAPE parameters. `filter` None keeps every neuron before the entropy cut."""

    top_rate: float = 0.10
    activation_bar: float = 0.80
    filter: float | None = None

    def __post_init__(self):
        for name in ("top_rate", "activation_bar", "filter"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"LAPE {name} must lie in (0, 1), got {value!r}")

    def signature(self) -> str:
        f = "none" if self.filter is None else f"{self.filter:g}"
        return f"lape|top_rate:{self.top_rate:g}|activation_bar:{self.activation_bar:g}|filter:{f}|v:{LAPE_VERSION}"


PRESETS = {
    "paper": LapeSettings(0.10, 0.80, None),  # the MergeScope paper's released code (default)
    "lape": LapeSettings(0.05, 0.95, 0.95),  # Tang et al. (2024) as published
}


def activation_rates(active_counts, token_counts) -> np.ndarray:
    """p = active / tokens. active: (layers, neurons, langs); tokens: (langs,) or (layers, langs)."""
    active = np.asarray(active_counts, dtype=np.float64)
    tokens = np.asarray(token_counts, dtype=np.float64)
    if active.ndim != 3:
        raise ValueError(f"active counts must be (layers, neurons, languages), got shape {active.shape}")
    if tokens.ndim == 1:
        tokens = np.broadcast_to(tokens, (active.shape[0], tokens.shape[0]))
    if tokens.shape != (active.shape[0], active.shape[2]):
        raise ValueError(f"token counts of shape {tokens.shape} do not match active counts {active.shape}")
    if (tokens <= 0).any():
        raise ValueError("a language has no masked tokens; its activation rate is undefined")
    if (active < 0).any() or (active > tokens[:, None, :]).any():
        raise ValueError("active counts must lie between 0 and the token count")
    return active / tokens[:, None, :]  # (layers, neurons, langs)


def _kth_smallest(values: np.ndarray, q: float) -> float:
    # The quantile as LAPE's reference code takes it: the round(q·N)-th smallest value.
    flat = np.sort(values, axis=None)
    k = min(max(int(round(q * flat.size)), 1), flat.size)
    return float(flat[k - 1])


def lape_entropy(rates: np.ndarray) -> np.ndarray:
    """Entropy of p normalised over languages, per neuron: (layers, neurons). Dead neurons get +inf."""
    total = rates.sum(axis=-1, keepdims=True)  # (layers, neurons, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_hat = np.where(total > 0, rates / np.where(total > 0, total, 1.0), 0.0)
        terms = np.where(p_hat > 0, -p_hat * np.log(np.where(p_hat > 0, p_hat, 1.0)), 0.0)
    entropy = terms.sum(axis=-1)
    # A neuron that never fires has no language distribution; LAPE's code would score it 0
    # (most specific) only to assign it nowhere. Excluding it keeps top_rate for real neurons.
    return np.where(total[..., 0] > 0, entropy, np.inf)


@dataclass
class LapeResult:
    """Selected neurons: per layer, per language, the neuron indices (ascending)."""

    languages: tuple[str, ...]
    neurons: list[dict[str, np.ndarray]]  # [layer][language] -> (k,) int indices
    counts: np.ndarray  # (layers, languages): neurons assigned per layer and language
    selected: np.ndarray  # (layers, neurons) bool: kept by the entropy cut (assigned or not)
    entropy: np.ndarray  # (layers, neurons)
    activation_bar_value: float
    filter_value: float | None
    settings: LapeSettings
    signature: str
    conditions: str = ""  # how data sets became conditions (engine/activations/conditions.py)

    def assigned(self, layer: int) -> set[tuple[int, str]]:
        """(neuron, language) pairs of one layer."""
        return {(int(i), lang) for lang, idx in self.neurons[layer].items() for i in idx}


def select_language_neurons(
    rates, languages, settings: LapeSettings | str = "paper", span: str = "", conditions: str = ""
) -> LapeResult:
    """LAPE selection over rates p of shape (layers, neurons, languages); `span` and `conditions`
    (how the languages were formed) only label the result."""
    if isinstance(settings, str):
        if settings not in PRESETS:
            raise ValueError(f"unknown LAPE preset {settings!r}; choose from {', '.join(PRESETS)}")
        settings = PRESETS[settings]
    rates = np.asarray(rates, dtype=np.float64)
    languages = tuple(languages)
    if rates.ndim != 3 or rates.shape[2] != len(languages):
        raise ValueError(f"rates must be (layers, neurons, {len(languages)} languages), got shape {rates.shape}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"duplicate languages: {languages}")
    if len(languages) < 2:
        raise ValueError("LAPE needs at least two languages to compare")
    if not np.isfinite(rates).all() or (rates < 0).any() or (rates > 1).any():
        raise ValueError("activation rates must be finite and within [0, 1]")
    n_layers, n_neurons, _ = rates.shape

    entropy = lape_entropy(rates)  # (layers, neurons)
    score = entropy.copy()
    filter_value = None
    if settings.filter is not None:
        filter_value = _kth_smallest(rates, settings.filter)
        score[rates.max(axis=-1) <= filter_value] = np.inf
    k = int(round(settings.top_rate * n_layers * n_neurons))
    # A stable sort picks exactly k neurons, ties broken by position, so results are reproducible.
    order = np.argsort(score, axis=None, kind="stable")[:k]
    order = order[np.isfinite(score.reshape(-1)[order])]
    selected = np.zeros(n_layers * n_neurons, dtype=bool)
    selected[order] = True
    selected = selected.reshape(n_layers, n_neurons)

    bar = _kth_smallest(rates, settings.activation_bar)
    assigned = selected[..., None] & (rates > bar)  # (layers, neurons, langs)
    neurons = [
        {lang: np.flatnonzero(assigned[layer, :, j]) for j, lang in enumerate(languages)} for layer in range(n_layers)
    ]
    sig = settings.signature() + (f"|span:{span}" if span else "") + (f"|conditions:{conditions}" if conditions else "")
    return LapeResult(
        languages, neurons, assigned.sum(axis=1), selected, entropy, bar, filter_value, settings, sig, conditions
    )


@dataclass
class NeuronHistograms:
    """Per-layer histograms of LAPE entropy and of selectivity (the largest normalised p)."""

    entropy_edges: np.ndarray  # (bins + 1,), from 0 to log(languages)
    entropy_counts: np.ndarray  # (layers, bins)
    selectivity_edges: np.ndarray  # (bins + 1,), from 1/languages to 1
    selectivity_counts: np.ndarray  # (layers, bins)
    dead: np.ndarray  # (layers,): neurons that never fired, left out of both histograms


def neuron_histograms(rates, bins: int = 20) -> NeuronHistograms:
    """Histograms per layer over neurons that fired at least once."""
    rates = np.asarray(rates, dtype=np.float64)
    n_langs = rates.shape[-1]
    entropy = lape_entropy(rates)
    total = rates.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        selectivity = rates.max(axis=-1) / total
    alive = total > 0
    e_edges = np.linspace(0.0, np.log(n_langs), bins + 1)
    s_edges = np.linspace(1.0 / n_langs, 1.0, bins + 1)
    e_counts = np.stack([np.histogram(entropy[l][alive[l]], e_edges)[0] for l in range(rates.shape[0])])
    s_counts = np.stack([np.histogram(selectivity[l][alive[l]], s_edges)[0] for l in range(rates.shape[0])])
    return NeuronHistograms(e_edges, e_counts, s_edges, s_counts, (~alive).sum(axis=1))


@dataclass
class SelectionComparison:
    """Base vs fine-tune, per layer, over (neuron, language) assignments."""

    base: np.ndarray  # (layers,)
    finetune: np.ndarray  # (layers,)
    gained: np.ndarray  # (layers,): in the fine-tune only
    lost: np.ndarray  # (layers,): in the base only
    overlap: np.ndarray  # (layers,)
    jaccard: np.ndarray  # (layers,): overlap / union (1.0 when both are empty, the paper's convention)
    per_language: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # lang -> field -> (layers,)
    signature: str = ""


def jaccard_index(overlap, union) -> np.ndarray:
    """|A ∩ B| / |A ∪ B|, and 1.0 for two empty sets (as the paper's indic_en_compare_src_tgt.py)."""
    overlap, union = np.asarray(overlap, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.where(union > 0, overlap / np.where(union > 0, union, 1.0), 1.0)


def _compare_sets(pairs_a: list[set], pairs_b: list[set]) -> dict[str, np.ndarray]:
    base = np.array([len(a) for a in pairs_a])
    tuned = np.array([len(b) for b in pairs_b])
    overlap = np.array([len(a & b) for a, b in zip(pairs_a, pairs_b)])
    union = base + tuned - overlap
    jaccard = jaccard_index(overlap, union)
    return dict(
        base=base, finetune=tuned, gained=tuned - overlap, lost=base - overlap, overlap=overlap, jaccard=jaccard
    )


def compare_selections(base: LapeResult, finetune: LapeResult) -> SelectionComparison:
    """How fine-tuning moved language-specific neurons, layer by layer."""
    if len(base.neurons) != len(finetune.neurons):
        raise ValueError(f"base has {len(base.neurons)} layers but the fine-tune has {len(finetune.neurons)}")
    if base.languages != finetune.languages:
        raise ValueError(f"languages differ: {base.languages} vs {finetune.languages}")
    layers = range(len(base.neurons))
    total = _compare_sets([base.assigned(l) for l in layers], [finetune.assigned(l) for l in layers])
    per_language = {
        lang: _compare_sets(
            [{int(i) for i in base.neurons[l][lang]} for l in layers],
            [{int(i) for i in finetune.neurons[l][lang]} for l in layers],
        )
        for lang in base.languages
    }
    sig = base.signature if base.signature == finetune.signature else f"{base.signature} vs {finetune.signature}"
    return SelectionComparison(**total, per_language=per_language, signature=sig)


@dataclass
class SpanOverlap:
    """One model's language-specific neurons read from the source span vs from the target span."""

    languages: tuple[str, ...]
    source: np.ndarray  # (layers, languages): neurons per condition, source span
    target: np.ndarray  # (layers, languages): neurons per condition, target span
    jaccard: np.ndarray  # (layers, languages): |S ∩ T| / |S ∪ T|, 1.0 when both are empty
    per_language: np.ndarray  # (languages,): Jaccard averaged over layers
    mean: float  # over every layer and language
    signature: str


def compare_spans(source: LapeResult, target: LapeResult) -> SpanOverlap:
    """Per layer and condition, how far the neurons found on the source span are those found on
    the target span (the paper's indic_en_compare_src_tgt.py)."""
    if source.languages != target.languages:
        raise ValueError(f"conditions differ: source span {source.languages} vs target span {target.languages}")
    if len(source.neurons) != len(target.neurons):
        raise ValueError(f"source-span selection has {len(source.neurons)} layers, target-span {len(target.neurons)}")
    layers = range(len(source.neurons))
    jaccard = np.stack(
        [
            _compare_sets(
                [set(source.neurons[l][lang].tolist()) for l in layers],
                [set(target.neurons[l][lang].tolist()) for l in layers],
            )["jaccard"]
            for lang in source.languages
        ],
        axis=1,
    )  # (layers, languages)
    sig = source.settings.signature() + "|span:source vs target"
    sig += f"|conditions:{source.conditions}" if source.conditions else ""
    return SpanOverlap(
        source.languages, source.counts, target.counts, jaccard, jaccard.mean(axis=0), float(jaccard.mean()), sig
    )
