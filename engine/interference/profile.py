"""The per-layer interference profile: tensors' sums grouped into the embedding, each block and the
head, the measures formed from them, the experts' LAPE neuron overlap, and the interference score.

Layer axis as the CKA curves': 0 is the embedding, l is block l, L + 1 the head (LM head and final
norm). The score of a layer is the mean of the components it has, each in [0, 1]:

- sign conflict: the share of the experts' |τ| mass on entries where they disagree in sign
  (what TIES's sign election discards or cancels);
- subspace collision: over expert pairs, subspace overlap × (1 − cosine) / 2: the pair updates the
  same directions (Gargiulo et al., CVPR 2025) without agreeing on them (identical experts: 0);
- neuron overlap, when given: over expert pairs, the Jaccard overlap of the gate neurons each
  expert's LAPE selection assigns to its own language (Tang et al. 2024), blocks only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from engine.interference.measures import TensorStats

EMBED, HEAD = "embed", "head"
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")

MEASURES = {  # key -> label, in the heatmap's column order
    "relative_norm": "‖τ‖ / ‖θ_base‖",
    "cosine": "cosine",
    "sign_conflict": "sign conflict",
    "sign_conflict_mass": "sign conflict (|τ|-weighted)",
    "ties_dropped": "TIES dropped",
    "ties_dropped_mass": "TIES dropped (|τ|-weighted)",
    "subspace_overlap": "subspace overlap",
    "neuron_overlap": "LAPE neuron overlap",
    "score": "interference score",
}


def tensor_group(name: str) -> str:
    """'embed', the 1-based block number as text, or 'head' (LM head, final norm, anything else)."""
    if match := _BLOCK.search(name):
        return str(int(match.group(1)) + 1)
    return EMBED if "embed_tokens" in name else HEAD


def _position(group: str, blocks: int) -> int:
    return 0 if group == EMBED else blocks + 1 if group == HEAD else int(group)


def _pair_mean(matrices: np.ndarray) -> np.ndarray:
    """Mean over expert pairs i < j of (layers, n, n), NaN pairs skipped: (layers,)."""
    n = matrices.shape[1]
    upper = np.triu_indices(n, 1)
    pairs = matrices[:, upper[0], upper[1]]  # (layers, pairs)
    out = np.full(matrices.shape[0], np.nan)
    has = np.isfinite(pairs).any(axis=1)
    out[has] = np.nanmean(pairs[has], axis=1)
    return out


@dataclass
class InterferenceProfile:
    """Measures per layer (rows in layer order) for one base and its experts (columns of the n × n matrices)."""

    groups: tuple[str, ...]  # 'embed', '1' … 'L', 'head'
    positions: np.ndarray  # (layers,) on the CKA layer axis
    experts: tuple[str, ...]
    norms: np.ndarray  # (layers, n): ‖τ_i‖
    relative_norms: np.ndarray  # (layers, n): ‖τ_i‖ / ‖θ_base‖
    cosine: np.ndarray  # (layers, n, n)
    sign_conflict: np.ndarray  # (layers,): share of entries
    sign_conflict_mass: np.ndarray  # (layers,): share of |τ| mass
    ties_dropped: np.ndarray  # (layers,): share of (expert, entry) pairs TIES drops
    ties_dropped_mass: np.ndarray  # (layers,): share of |τ| mass TIES drops
    subspace_overlap: np.ndarray  # (layers, n, n); NaN where a layer has no matrix
    neuron_overlap: np.ndarray | None  # (layers, n, n); NaN outside blocks; None: not computed
    score: np.ndarray  # (layers,)
    signature: str

    def measures(self) -> dict[str, np.ndarray]:
        """Each measure as one value per layer (pairs and experts averaged), in MEASURES order."""
        values = {
            "relative_norm": self.relative_norms.mean(axis=1),
            "cosine": _pair_mean(self.cosine),
            "sign_conflict": self.sign_conflict,
            "sign_conflict_mass": self.sign_conflict_mass,
            "ties_dropped": self.ties_dropped,
            "ties_dropped_mass": self.ties_dropped_mass,
            "subspace_overlap": _pair_mean(self.subspace_overlap),
            "neuron_overlap": None if self.neuron_overlap is None else _pair_mean(self.neuron_overlap),
            "score": self.score,
        }
        return {k: v for k, v in values.items() if v is not None}


def interference_score(
    sign_conflict_mass: np.ndarray, subspace: np.ndarray, cosine: np.ndarray, neurons: np.ndarray | None
) -> np.ndarray:
    """Mean of the available components per layer (module docstring): (layers,)."""
    components = [sign_conflict_mass, _pair_mean(subspace * (1 - cosine) / 2)]
    if neurons is not None:
        components.append(_pair_mean(neurons))
    stacked = np.stack(components)  # (components, layers)
    out = np.full(stacked.shape[1], np.nan)
    has = np.isfinite(stacked).any(axis=0)
    out[has] = np.nanmean(stacked[:, has], axis=0)
    return out


def _divide(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def build_profile(
    stats: Sequence[TensorStats], experts: Sequence[str], blocks: int, signature: str
) -> InterferenceProfile:
    """Group tensors' sums by layer and form the measures (neuron overlap: see with_neuron_overlap)."""
    n = len(experts)
    by_group: dict[str, list[TensorStats]] = {}
    for s in stats:
        by_group.setdefault(tensor_group(s.name), []).append(s)
    groups = sorted(by_group, key=lambda g: _position(g, blocks))
    gram = np.stack([sum(s.gram for s in by_group[g]) for g in groups])  # (layers, n, n)
    norms = np.sqrt(np.einsum("lii->li", gram))  # (layers, n)
    base_norm = np.sqrt([sum(s.base_sq for s in by_group[g]) for g in groups])

    def total(g: str, field: str) -> float:
        return float(sum(getattr(s, field) for s in by_group[g]))

    numel = np.array([total(g, "numel") for g in groups])
    mass = np.array([total(g, "mass") for g in groups])
    subspace = np.full((len(groups), n, n), np.nan)
    for row, g in enumerate(groups):
        mats = [s.subspace for s in by_group[g] if s.subspace is not None]
        if mats:
            stacked = np.stack(mats)
            has = np.isfinite(stacked).any(axis=0)
            subspace[row][has] = np.nanmean(stacked[:, has], axis=0)
    cosine = _divide(gram, norms[:, :, None] * norms[:, None, :])
    conflict_mass = _divide([total(g, "conflict_mass") for g in groups], mass)
    return InterferenceProfile(
        groups=tuple(groups),
        positions=np.array([_position(g, blocks) for g in groups]),
        experts=tuple(experts),
        norms=norms,
        relative_norms=_divide(norms, base_norm[:, None]),
        cosine=cosine,
        sign_conflict=_divide([total(g, "conflict_entries") for g in groups], numel),
        sign_conflict_mass=conflict_mass,
        ties_dropped=1 - _divide([total(g, "ties_kept_entries") for g in groups], n * numel),
        ties_dropped_mass=1 - _divide([total(g, "ties_kept_mass") for g in groups], mass),
        subspace_overlap=subspace,
        neuron_overlap=None,
        score=interference_score(conflict_mass, subspace, cosine, None),
        signature=signature,
    )


def neuron_set_overlap(sets: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Jaccard overlap of experts' neuron sets per block: sets[i][b] holds expert i's neuron indices in
    block b; (blocks, n, n). Two empty sets share nothing: 0, so a block where LAPE assigns no neuron
    lowers the score like one where the experts' neurons are disjoint, instead of leaving the score."""
    n, blocks = len(sets), len(sets[0])
    out = np.zeros((blocks, n, n))
    for b in range(blocks):
        members = [set(np.asarray(sets[i][b]).tolist()) for i in range(n)]
        for i in range(n):
            for j in range(n):
                union = len(members[i] | members[j])
                if union:
                    out[b, i, j] = len(members[i] & members[j]) / union
    return out


def with_neuron_overlap(profile: InterferenceProfile, per_block: np.ndarray, signature: str) -> InterferenceProfile:
    """The profile with the experts' per-block neuron overlap (blocks, n, n) placed on its block
    rows and the score recomputed with it; `signature` (the LAPE settings) joins the profile's."""
    overlap = np.full(profile.cosine.shape, np.nan)
    for row, group in enumerate(profile.groups):
        if group not in (EMBED, HEAD):
            overlap[row] = per_block[int(group) - 1]
    score = interference_score(profile.sign_conflict_mass, profile.subspace_overlap, profile.cosine, overlap)
    return replace(profile, neuron_overlap=overlap, score=score, signature=f"{profile.signature}|{signature}")
