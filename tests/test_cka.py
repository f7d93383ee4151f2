"""CKA: invariances, a float64 NumPy reference written here, unbiasedness of the debiased variant."""

from __future__ import annotations

import numpy as np
import pytest

from engine import cka
from engine.errors import DataError, IncompatibleModelsError


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space form (Kornblith et al. eq. for linear kernels): ||YᵀX||² / (||XᵀX|| ||YᵀY||)."""
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def numpy_unbiased_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out term by term."""
    n = x.shape[0]
    k = x.astype(np.float64) @ x.T.astype(np.float64)
    l = y.astype(np.float64) @ y.T.astype(np.float64)
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ k @ l @ one)
    ) / (n * (n - 3))


def numpy_debiased_cka(x, y) -> float:
    return numpy_unbiased_hsic(x, y) / np.sqrt(numpy_unbiased_hsic(x, x) * numpy_unbiased_hsic(y, y))


def _data(n=64, d1=20, d2=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1))
    y = x @ rng.normal(size=(d1, d2)) + 0.5 * rng.normal(size=(n, d2))
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
def test_identical_inputs_give_one(debiased):
    x, _ = _data()
    assert cka.linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    x, y = _data()
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(x.shape[1], x.shape[1])))
    base = cka.linear_cka(x, y, debiased=debiased)
    assert cka.linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka.linear_cka(3.7 * x, 0.01 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)


def test_near_zero_for_independent_data_at_large_n():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    assert cka.linear_cka(x, y) < 0.02
    assert abs(cka.linear_cka(x, y, debiased=True)) < 0.02


@pytest.mark.parametrize("seed,n", [(0, 8), (1, 50), (2, 200)])
def test_equals_numpy_reference(seed, n):
    x, y = _data(n=n, seed=seed)
    assert cka.linear_cka(x, y) == pytest.approx(numpy_linear_cka(x, y), abs=1e-6)
    assert cka.linear_cka(x, y, debiased=True) == pytest.approx(numpy_debiased_cka(x, y), abs=1e-6)
    assert cka.hsic(x, y, debiased=True) == pytest.approx(numpy_unbiased_hsic(x, y), rel=1e-9)
    # float32 inputs still accumulate in float64
    assert cka.linear_cka(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(numpy_linear_cka(x, y), abs=1e-6)


def test_debiased_hsic_is_unbiased_on_known_cases():
    rng = np.random.default_rng(3)
    trials, n = 3000, 8
    # Independent features: population HSIC is 0. The biased estimator sits well above 0.
    u = [cka.hsic(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), debiased=True) for _ in range(trials)]
    b = [cka.hsic(rng.normal(size=(n, 3)), rng.normal(size=(n, 3))) for _ in range(trials)]
    assert abs(np.mean(u)) < 4 * np.std(u) / np.sqrt(trials)
    assert np.mean(b) > 10 * np.std(b) / np.sqrt(trials)
    # y = x, x ~ N(0, 1) scalar: population linear HSIC = ||Cov(x, y)||² = 1.
    u = []
    for _ in range(trials):
        x = rng.normal(size=(n, 1))
        u.append(cka.hsic(x, x, debiased=True))
    assert abs(np.mean(u) - 1.0) < 4 * np.std(u) / np.sqrt(trials)


@pytest.mark.parametrize("debiased", [False, True])
def test_matrix_and_curve_match_pairwise(debiased):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 30, 16)).cumsum(axis=0)  # (layers, n, d): layers drift, so values vary
    b = a[:4, :, :10] + 0.3 * rng.normal(size=(4, 30, 10))
    m = cka.cka_matrix(a, b, debiased=debiased)
    ref = numpy_debiased_cka if debiased else numpy_linear_cka
    expected = np.array([[ref(a[i], b[j]) for j in range(4)] for i in range(5)])
    np.testing.assert_allclose(m.values, expected, atol=1e-6)
    self_m = cka.cka_matrix(a, debiased=debiased)
    np.testing.assert_allclose(np.diag(self_m.values), 1.0, atol=1e-12)
    np.testing.assert_allclose(self_m.values, self_m.values.T, atol=1e-12)
    curve = cka.cka_curve(a[:4], b, debiased=debiased)
    np.testing.assert_allclose(curve.values, np.diag(expected[:4]), atol=1e-6)
    assert ("debiased" if debiased else "linear") in m.signature and "n:30" in curve.signature


def test_bad_input():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 10, 6)), rng.normal(size=(3, 10, 6))
    with pytest.raises(IncompatibleModelsError, match="4 layers.*3"):
        cka.cka_curve(a, b)
    with pytest.raises(IncompatibleModelsError):
        cka.cka_matrix(a, b).diagonal()
    assert cka.cka_matrix(a, b).values.shape == (4, 3)  # different depths are fine for L × L
    with pytest.raises(DataError, match="at least 2 sentences"):
        cka.linear_cka(a[0][:1], a[0][:1])
    with pytest.raises(DataError, match="at least 4"):
        cka.linear_cka(a[0][:3], a[0][:3], debiased=True)
    with pytest.raises(DataError, match="same sentences"):
        cka.cka_matrix(a, rng.normal(size=(4, 9, 6)))
    assert np.isnan(cka.linear_cka(np.ones((5, 3)), a[0][:5]))
    bad = a.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(DataError, match="B layer 2: .*NaN"):
        cka.cka_matrix(a, bad)
