"""Layer-wise representation similarity: linear CKA and debiased CKA.

Linear CKA (Kornblith et al., 2019, "Similarity of Neural Network Representations Revisited")
compares two representations of the same n sentences through their centred Gram matrices:

    CKA(K, L) = <HKH, HLH>_F / (||HKH||_F ||HLH||_F),   K = X Xᵀ, L = Y Yᵀ, H = I - 11ᵀ/n

The debiased variant (Nguyen, Raghu & Kornblith, 2021) replaces each HSIC term with the
unbiased estimator of Song et al. (2012). That estimator equals an inner product of
"U-centred" Gram matrices (Székely & Rizzo, 2014), so both variants have the same shape here:
transform each Gram matrix once, then every comparison is a Frobenius inner product.
That is what makes the L × L cross-layer matrix cheap: one Gram per layer per model
(not per pair), then one (La, n²) @ (n², Lb) product gives all HSIC terms at once.

Used for the per-layer CKA figures of the MergeScope paper (Gain et al., arXiv 2604.02881).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.errors import DataError, IncompatibleModelsError

CKA_VERSION = "1"


def _as_layers(layers, name: str) -> list[torch.Tensor]:
    """Accept (L, n, d) arrays/tensors or a sequence of (n, d_l) matrices; check n agrees."""
    if isinstance(layers, (np.ndarray, torch.Tensor)):
        if layers.ndim != 3:
            raise DataError(f"{name}: expected (layers, n_sentences, d_model), got shape {tuple(layers.shape)}")
        layers = list(layers)
    mats = [torch.as_tensor(x) for x in layers]
    if not mats:
        raise DataError(f"{name}: no layers")
    for i, x in enumerate(mats):
        if x.ndim != 2:
            raise DataError(f"{name} layer {i}: expected (n_sentences, d_model), got shape {tuple(x.shape)}")
        if x.shape[0] != mats[0].shape[0]:
            raise DataError(f"{name} layer {i}: {x.shape[0]} sentences but layer 0 has {mats[0].shape[0]}")
        if not torch.isfinite(x).all():
            raise DataError(f"{name} layer {i}: representations contain NaN or Inf")
    return mats


def _check_n(n: int, debiased: bool, what: str) -> None:
    if n < 2:
        raise DataError(f"{what}: CKA needs at least 2 sentences, got {n}")
    if debiased and n < 4:
        raise DataError(f"{what}: debiased CKA needs at least 4 sentences, got {n}")


def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """H X Xᵀ H in float64, computed as (HX)(HX)ᵀ: centring the features is cheaper than the Gram."""
    x = x.to(torch.float64)  # (n, d)
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T  # (n, n)


def u_centred_gram(x: torch.Tensor) -> torch.Tensor:
    """The U-centred Gram matrix of Székely & Rizzo, float64; <Ũ_K, Ũ_L>/(n(n-3)) is Song's unbiased HSIC."""
    x = x.to(torch.float64)  # (n, d)
    n = x.shape[0]
    k = x @ x.T  # (n, n)
    k.fill_diagonal_(0.0)
    row = k.sum(dim=1, keepdim=True) / (n - 2)  # (n, 1)
    total = k.sum() / ((n - 1) * (n - 2))
    u = k - row - row.T + total
    u.fill_diagonal_(0.0)
    return u  # (n, n)


def _transform(x: torch.Tensor, debiased: bool, device: torch.device | None) -> torch.Tensor:
    x = x.to(device) if device is not None else x
    return u_centred_gram(x) if debiased else centred_gram(x)


def linear_cka(x, y, debiased: bool = False) -> float:
    """CKA between two (n, d) representations of the same n sentences (feature counts may differ)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim != 2 or y.ndim != 2:
        raise DataError(f"linear_cka expects two (n, d) matrices, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"linear_cka: {x.shape[0]} sentences vs {y.shape[0]}; rows must be the same sentences")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise DataError("linear_cka: representations contain NaN or Inf")
    _check_n(x.shape[0], debiased, "linear_cka")
    gx, gy = _transform(x, debiased, None), _transform(y, debiased, None)
    return _ratio(float((gx * gy).sum()), float((gx * gx).sum()), float((gy * gy).sum()))


def hsic(x, y, debiased: bool = False) -> float:
    """Linear-kernel HSIC of two (n, d) matrices: tr(KcLc)/(n-1)², or Song et al.'s unbiased estimator."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    n = x.shape[0]
    _check_n(n, debiased, "hsic")
    inner = float((_transform(x, debiased, None) * _transform(y, debiased, None)).sum())
    return inner / (n * (n - 3)) if debiased else inner / (n - 1) ** 2


def _ratio(xy: float, xx: float, yy: float) -> float:
    # A constant representation has zero HSIC with itself; CKA is undefined there (NaN, not 0).
    denom = math.sqrt(xx * yy) if xx > 0 and yy > 0 else 0.0
    return xy / denom if denom > 0 else float("nan")


def last_layer_label(final_norm: bool) -> str:
    """How the last layer was captured, for signatures: the last block's raw output (the paper's
    analysis/cka_masked.py) or the output after the final norm (Hugging Face's hidden_states)."""
    return "final-norm" if final_norm else "block-output"


def signature(debiased: bool, n: int, span: str = "", **extra) -> str:
    """Settings signature shown with each figure and used in cache keys, sacrebleu-style."""
    parts = [f"cka:{'debiased' if debiased else 'linear'}", f"n:{n}", "acc:float64"]
    if span:
        parts.append(f"span:{span}")
    parts += [f"{k}:{v}" for k, v in sorted(extra.items())]
    parts.append(f"v:{CKA_VERSION}")
    return "|".join(parts)


@dataclass
class CKAMatrix:
    """CKA between every layer of model A (rows) and every layer of model B (columns)."""

    values: np.ndarray  # (layers_a, layers_b)
    debiased: bool
    n: int
    signature: str
    labels: tuple[str, str] = ("A", "B")

    def diagonal(self) -> np.ndarray:
        """The per-layer curve; only meaningful when both models have the same depth."""
        if self.values.shape[0] != self.values.shape[1]:
            raise IncompatibleModelsError(
                f"{self.labels[0]} has {self.values.shape[0]} layers and {self.labels[1]} has {self.values.shape[1]}; "
                "a layer-by-layer curve needs equal depth (use the L × L matrix instead)"
            )
        return np.diag(self.values).copy()


@dataclass
class CKACurve:
    """CKA of layer l of model A with layer l of model B, for every l."""

    values: np.ndarray  # (layers,)
    debiased: bool
    n: int
    signature: str
    labels: tuple[str, str] = ("A", "B")
    extra: dict = field(default_factory=dict)


def _stack(layers: list[torch.Tensor], debiased: bool, device) -> torch.Tensor:
    """One transformed Gram per layer, flattened: (layers, n*n) float64 on `device`."""
    n = layers[0].shape[0]
    out = torch.empty(len(layers), n * n, dtype=torch.float64, device=device)
    for i, x in enumerate(layers):
        out[i] = _transform(x, debiased, device).reshape(-1)
    return out


def _resolve(device) -> torch.device:
    if device is not None:
        return torch.device(device)
    from engine.device import default_device

    return default_device()


def cka_matrix(
    layers_a: Sequence | np.ndarray | torch.Tensor,
    layers_b: Sequence | np.ndarray | torch.Tensor | None = None,
    debiased: bool = False,
    span: str = "",
    labels: tuple[str, str] = ("A", "B"),
    device=None,
) -> CKAMatrix:
    """Full cross-layer CKA: entry (i, j) compares layer i of A with layer j of B.

    Depths may differ. With `layers_b` None, A is compared with itself (Grams computed once).
    Memory: (La + Lb) n² float64 values (about 310 MB per model at L = 37, n = 1024).
    """
    a = _as_layers(layers_a, labels[0])
    b = a if layers_b is None else _as_layers(layers_b, labels[1])
    n = a[0].shape[0]
    if b[0].shape[0] != n:
        raise DataError(
            f"{labels[0]} has {n} sentences and {labels[1]} has {b[0].shape[0]}; CKA needs the same sentences"
        )
    _check_n(n, debiased, f"{labels[0]} vs {labels[1]}")
    device = _resolve(device)
    ga = _stack(a, debiased, device)  # (La, n*n)
    gb = ga if layers_b is None else _stack(b, debiased, device)  # (Lb, n*n)
    cross = (ga @ gb.T).cpu().numpy()  # (La, Lb): every HSIC(K_i, L_j) at once
    norm_a = (ga * ga).sum(dim=1).cpu().numpy()  # (La,)
    norm_b = norm_a if layers_b is None else (gb * gb).sum(dim=1).cpu().numpy()  # (Lb,)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(norm_a, norm_b))
        values = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    return CKAMatrix(values, debiased, n, signature(debiased, n, span, cross="LxL"), labels)


def cka_curve(
    layers_a: Sequence | np.ndarray | torch.Tensor,
    layers_b: Sequence | np.ndarray | torch.Tensor,
    debiased: bool = False,
    span: str = "",
    labels: tuple[str, str] = ("A", "B"),
    device=None,
) -> CKACurve:
    """Per-layer CKA of two models of equal depth (IncompatibleModelsError otherwise)."""
    a = _as_layers(layers_a, labels[0])
    b = _as_layers(layers_b, labels[1])
    if len(a) != len(b):
        raise IncompatibleModelsError(
            f"{labels[0]} has {len(a)} layers and {labels[1]} has {len(b)}; "
            "a layer-by-layer CKA curve needs equal depth (the L × L matrix allows different depths)"
        )
    n = a[0].shape[0]
    if b[0].shape[0] != n:
        raise DataError(
            f"{labels[0]} has {n} sentences and {labels[1]} has {b[0].shape[0]}; CKA needs the same sentences"
        )
    _check_n(n, debiased, f"{labels[0]} vs {labels[1]}")
    device = _resolve(device)
    values = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        gx, gy = _transform(x, debiased, device), _transform(y, debiased, device)
        values[i] = _ratio(float((gx * gy).sum()), float((gx * gx).sum()), float((gy * gy).sum()))
    return CKACurve(values, debiased, n, signature(debiased, n, span, cross="diag"), labels)
