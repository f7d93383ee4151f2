"""Principal angles, subspace distance and classical MDS on planted subspaces, against NumPy written here."""

from __future__ import annotations

import numpy as np
import pytest

from engine import geometry


def planted(basis, n, rng, noise=0.0):
    """n points spread over the span of `basis` (d, k), plus isotropic noise."""
    coeffs = rng.normal(size=(n, basis.shape[1])) * np.linspace(3, 1, basis.shape[1])
    return coeffs @ basis.T + noise * rng.normal(size=(n, basis.shape[0])) + 5.0  # an offset centring must remove


def test_identical_and_orthogonal_subspaces():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(40, 8)))
    a = planted(q[:, :4], 50, rng)
    b = planted(q[:, :4], 50, rng)  # other points, the same subspace
    c = planted(q[:, 4:], 50, rng)  # an orthogonal subspace
    qa, qb, qc = (geometry.subspace_basis(x, k=4) for x in (a, b, c))
    np.testing.assert_allclose(geometry.principal_angles(qa, qb), 0.0, atol=1e-6)
    np.testing.assert_allclose(geometry.principal_angles(qa, qc), np.pi / 2, atol=1e-12)
    assert geometry.subspace_distance(geometry.principal_angles(qa, qb)) == pytest.approx(0.0, abs=1e-6)
    assert geometry.subspace_distance(geometry.principal_angles(qa, qc)) == pytest.approx(1.0)


def test_angles_between_planes_at_a_known_angle():
    # span{e1, e2} vs span{e1, cos t e2 + sin t e3}: principal angles 0 and t.
    t = 0.3
    d = 6
    e = np.eye(d)
    qa = e[:, :2]
    qb = np.stack([e[:, 0], np.cos(t) * e[:, 1] + np.sin(t) * e[:, 2]], axis=1)
    np.testing.assert_allclose(geometry.principal_angles(qa, qb), [0.0, t], atol=1e-12)
    assert geometry.subspace_distance(np.array([0.0, t])) == pytest.approx(np.sqrt(np.sin(t) ** 2 / 2))


def test_rank_is_capped_by_the_centred_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 30))
    basis = geometry.subspace_basis(x, k=64)
    assert basis.shape == (30, 9)  # 10 centred rows span 9 directions
    np.testing.assert_allclose(basis.T @ basis, np.eye(9), atol=1e-12)
    # The top direction is the leading eigenvector of the covariance, computed here independently.
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    assert abs(vectors[:, -1] @ basis[:, 0]) == pytest.approx(1.0)


def test_geometry_of_three_models_and_its_map():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(24, 12)))
    reps = {
        "base": np.stack([planted(q[:, :3], 40, rng), planted(q[:, :3], 40, rng)]),  # (layers 2, n, d)
        "ft-a": np.stack([planted(q[:, :3], 40, rng), planted(q[:, 3:6], 40, rng)]),
        "ft-b": np.stack([planted(q[:, :3], 40, rng), planted(q[:, 6:9], 40, rng)]),
    }
    result = geometry.subspace_geometry(reps, k=3, span="target")
    assert result.pairs == (("base", "ft-a"), ("base", "ft-b"), ("ft-a", "ft-b")) and result.rank == 3
    np.testing.assert_allclose(result.median_angle[0], 0.0, atol=1e-4)
    np.testing.assert_allclose(result.median_angle[1], 90.0, atol=1e-9)
    np.testing.assert_allclose(result.distance[1], 1.0)
    assert result.distances[1][0, 1] == result.distances[1][1, 0] == pytest.approx(1.0)
    # Three points at mutual distance 1: an equilateral triangle with side 1 on the map.
    xy = result.mds_coordinates(1)
    pairwise = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.testing.assert_allclose(pairwise, 1.0 - np.eye(3), atol=1e-9)
    assert "pca_rank:3" in result.signature and "span:target" in result.signature


def test_classical_mds_recovers_planar_points():
    points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [-2.0, 0.5]])
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    xy = geometry.classical_mds(d)
    np.testing.assert_allclose(np.linalg.norm(xy[:, None] - xy[None], axis=-1), d, atol=1e-9)
    with pytest.raises(ValueError, match="symmetric"):
        geometry.classical_mds(np.array([[0.0, 1.0], [2.0, 0.0]]))
