"""Representation geometry: principal angles between models' top-k PCA subspaces, and a 2-D map.

Follows the MergeScope paper's code (Gain et al., arXiv 2604.02881; babangain/mt-model-merging,
analysis/mds_full_data.py, plotted by analysis/calc_angle.py). Per layer and model, the
span-pooled representations X (n sentences × d) are centred and their top-k right singular
vectors span the model's subspace (k = 64). Two subspaces with orthonormal bases Qa, Qb meet at
principal angles θ_i = arccos σ_i(Qaᵀ Qb) (Björck & Golub, 1973); the paper reports their median
in degrees, and the subspace distance sqrt(mean sin² θ_i), 0 for one subspace and 1 for
orthogonal ones. The distances of all models at one layer place them on a 2-D map by classical
(Torgerson) MDS: the top two eigenvectors of the double-centred squared distances, scaled by the
square roots of their eigenvalues. The paper runs scikit-learn's metric MDS (SMACOF, 6 random
starts) instead; classical MDS is deterministic and needs no extra dependency, and both place
points to preserve the same distances (exactly so when they are Euclidean in 2-D).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np

GEOMETRY_VERSION = "1"
DEFAULT_RANK = 64


def subspace_basis(x, k: int = DEFAULT_RANK) -> np.ndarray:
    """Orthonormal basis (d, k_eff) of the top-k principal directions of the rows of x (n, d).

    k_eff = min(k, n - 1, d): after centring, n rows span at most n - 1 directions, and a
    direction beyond the rank would be arbitrary.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a subspace needs an (n ≥ 2, d) matrix of representations, got shape {x.shape}")
    centred = x - x.mean(axis=0, keepdims=True)
    n, d = centred.shape
    k_eff = min(k, n - 1, d)
    # The top right singular vectors from the eigenvectors of the smaller Gram matrix: 5-10x faster
    # than a full SVD at n = 512, d = 2048 (bench/bench_geometry.py), and as exact for the leading
    # directions, whose eigenvalues sit far above float64's noise.
    if n < d:
        values, u = np.linalg.eigh(centred @ centred.T)  # (n,), (n, n), ascending
        top = np.argsort(values)[::-1][:k_eff]
        basis = centred.T @ u[:, top] / np.sqrt(np.clip(values[top], np.finfo(float).tiny, None))
        # Directions with (near-)zero variance come out of the division unnormalised: re-orthonormalise.
        basis, _ = np.linalg.qr(basis)
        return basis
    values, v = np.linalg.eigh(centred.T @ centred)  # (d,), (d, d), ascending
    return v[:, np.argsort(values)[::-1][:k_eff]]


def principal_angles(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """Principal angles in radians, ascending, between the spans of orthonormal bases (d, ka), (d, kb)."""
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"bases live in spaces of different dimension: {qa.shape[0]} vs {qb.shape[0]}")
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)  # descending
    return np.arccos(np.clip(cosines, 0.0, 1.0))


def subspace_distance(angles: np.ndarray) -> float:
    """sqrt(mean sin² θ): 0 for the same subspace, 1 for orthogonal ones."""
    return float(np.sqrt(np.mean(np.sin(angles) ** 2)))


def classical_mds(distances, dims: int = 2) -> np.ndarray:
    """Coordinates (m, dims) whose Euclidean distances approximate a symmetric (m, m) distance matrix."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.allclose(d, d.T):
        raise ValueError(f"MDS needs a symmetric square distance matrix, got shape {d.shape}")
    m = d.shape[0]
    centring = np.eye(m) - np.full((m, m), 1.0 / m)
    gram = -0.5 * centring @ (d**2) @ centring
    values, vectors = np.linalg.eigh(gram)  # ascending
    order = np.argsort(values)[::-1][:dims]
    scale = np.sqrt(np.clip(values[order], 0.0, None))  # negative eigenvalues: non-Euclidean residue
    coords = vectors[:, order] * scale
    # Eigenvectors have no sign; fix it so the same distances always give the same picture.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), np.arange(coords.shape[1])])
    coords = coords * np.where(signs == 0, 1.0, signs)
    if coords.shape[1] < dims:
        coords = np.pad(coords, ((0, 0), (0, dims - coords.shape[1])))
    return coords


@dataclass
class SubspaceGeometry:
    """Principal-angle geometry of several models' representations, layer by layer."""

    names: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    median_angle: np.ndarray  # (layers, pairs): median principal angle in degrees, as the paper plots
    distance: np.ndarray  # (layers, pairs): subspace distance in [0, 1]
    distances: np.ndarray  # (layers, models, models): the same distances as matrices
    rank: int  # k used: min(k, n - 1, d)
    signature: str

    def mds_coordinates(self, layer: int) -> np.ndarray:
        """2-D classical-MDS coordinates (models, 2) of the models at one layer."""
        return classical_mds(self.distances[layer])


def subspace_geometry(
    representations: Mapping[str, np.ndarray], k: int = DEFAULT_RANK, span: str = ""
) -> SubspaceGeometry:
    """Geometry of every pair of models from pooled representations, name -> (layers, n, d)."""
    names = tuple(representations)
    if len(names) < 2:
        raise ValueError("geometry compares models; give at least two")
    arrays = {name: np.asarray(r) for name, r in representations.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    if len({s[:2] for s in shapes.values()}) > 1 or any(len(s) != 3 for s in shapes.values()):
        raise ValueError(f"representations must share (layers, n) and be (layers, n, d): {shapes}")
    n_layers = next(iter(shapes.values()))[0]
    pairs = tuple(combinations(names, 2))
    index = {name: i for i, name in enumerate(names)}
    median_angle = np.zeros((n_layers, len(pairs)))
    distance = np.zeros((n_layers, len(pairs)))
    matrices = np.zeros((n_layers, len(names), len(names)))
    rank = 0
    for layer in range(n_layers):
        bases = {name: subspace_basis(arrays[name][layer], k) for name in names}
        rank = min(b.shape[1] for b in bases.values())
        for p, (a, b) in enumerate(pairs):
            angles = principal_angles(bases[a], bases[b])
            median_angle[layer, p] = np.degrees(np.median(angles))
            distance[layer, p] = subspace_distance(angles)
            matrices[layer, index[a], index[b]] = matrices[layer, index[b], index[a]] = distance[layer, p]
    sig = f"geometry|pca_rank:{rank}|angles:median_deg|distance:rms_sin|mds:classical|v:{GEOMETRY_VERSION}"
    sig += f"|span:{span}" if span else ""
    return SubspaceGeometry(names, pairs, median_angle, distance, matrices, rank, sig)
