"""Language conditions for neuron statistics: which data sets pool into which LAPE condition.

The paper's code (Gain et al., arXiv 2604.02881; babangain/mt-model-merging,
analysis/000-consolidated-en-indic.sh running src/activations_indic_en_granular.py and
src/identify_indic_en_granular.py) forms one condition per data set, named by the direction's
non-English language (hi, bn, ta, te), and reads either span with it: an En→X source-span
analysis compares the English sources of four data sets, an X→En target-span analysis their
English references. That is the default here (`dataset`). The option `span` names a condition by
the language of the span's own text, so data sets whose span is in one language pool together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.errors import DataError

PIVOT = "en"
CONDITIONS = {
    "dataset": "one condition per direction's non-English language (the paper's)",
    "span": "one condition per language of the span's text",
}


def dataset_condition(src_lang: str, tgt_lang: str) -> str:
    """The direction's non-English language; a direction without exactly one English side is its own condition."""
    if (src_lang == PIVOT) != (tgt_lang == PIVOT):
        return tgt_lang if src_lang == PIVOT else src_lang
    return f"{src_lang}-{tgt_lang}"


def condition_labels(directions: Sequence[tuple[str, str]], span: str, grouping: str = "dataset") -> list[str]:
    """The condition of each (src_lang, tgt_lang) data set for one span."""
    if grouping not in CONDITIONS:
        raise DataError(f"unknown condition grouping {grouping!r}; choose from {', '.join(CONDITIONS)}")
    if span not in ("source", "target"):
        raise DataError(f"span must be source or target, got {span!r}")
    if grouping == "dataset":
        return [dataset_condition(s, t) for s, t in directions]
    return [s if span == "source" else t for s, t in directions]


def condition_rates(captures: Sequence, labels: Sequence[str], span: str) -> tuple[tuple[str, ...], torch.Tensor]:
    """LAPE input from one model's captures on several data sets: (conditions, rates).

    Data sets with the same label pool (counts summed) before dividing by their tokens; rates is
    (layers, d_mlp, conditions) float64, conditions sorted by name.
    """
    if len(captures) != len(labels):
        raise DataError(f"{len(captures)} captures but {len(labels)} condition labels")
    if not captures:
        raise DataError("no captures given")
    active, tokens = {}, {}
    for c, label in zip(captures, labels):
        if span not in c.active:
            raise DataError(f"a capture lacks the {span} span; capture it with spans including {span!r}")
        active[label] = active.get(label, 0) + c.active[span].double()  # (layers, d_mlp)
        tokens[label] = tokens.get(label, 0) + int(c.tokens[span].sum())
    shapes = {tuple(a.shape) for a in active.values()}
    if len(shapes) > 1:
        raise DataError(f"captures come from models of different shapes {sorted(shapes)}; pool one model at a time")
    conditions = tuple(sorted(active))
    counts = torch.stack([active[c] for c in conditions], dim=-1)  # (layers, d_mlp, conditions)
    totals = torch.tensor([tokens[c] for c in conditions], dtype=torch.float64)  # (conditions,)
    return conditions, counts / totals
