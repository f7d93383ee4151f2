"""Benchmark: principal-angle geometry of several systems, subspace bases from the smaller Gram
matrix's eigenvectors vs a full SVD of each centred representation matrix.

    .venv/bin/python bench/bench_geometry.py                   # 6 systems, 4 layers, n=512, d=2048, k=64
    .venv/bin/python bench/bench_geometry.py --layers 37       # every layer of Qwen2.5-3B (slow on CPU)

The baseline builds each basis as the paper's analysis/mds_full_data.py does (centre, full SVD,
top-k right singular vectors, QR) and then the same angles and distances; both run in the same
process on the same data. Per-layer times are scaled to 37 layers (Qwen2.5-3B plus embeddings)
in the output. The largest difference of any median angle between the two is reported.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from engine import geometry  # noqa: E402


def svd_basis(x: np.ndarray, k: int) -> np.ndarray:
    centred = x.astype(np.float64) - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    q, _ = np.linalg.qr(vt[: min(k, x.shape[0] - 1, x.shape[1])].T)
    return q


def svd_geometry(reps: dict[str, np.ndarray], k: int) -> np.ndarray:
    """(layers, pairs) median angles in degrees with SVD bases."""
    names = list(reps)
    n_layers = next(iter(reps.values())).shape[0]
    out = np.zeros((n_layers, len(names) * (len(names) - 1) // 2))
    for layer in range(n_layers):
        bases = {name: svd_basis(reps[name][layer], k) for name in names}
        for p, (a, b) in enumerate(combinations(names, 2)):
            out[layer, p] = np.degrees(np.median(geometry.principal_angles(bases[a], bases[b])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=6, help="base, 4 experts and a merge")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--n", type=int, default=512, help="sentences: 128 per language × 4, the paper's")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"cpu {platform.processor() or platform.machine()}, systems={args.systems} layers={args.layers} "
        f"n={args.n} d={args.d} k={args.k}"
    )
    rng = np.random.default_rng(args.seed)
    # A shared low-rank structure plus per-system drift, so angles spread between 0 and 90 degrees.
    shared = rng.normal(size=(args.layers, args.n, 96)) @ rng.normal(size=(96, args.d))
    reps = {
        f"system{i}": (shared + 0.5 * i * rng.normal(size=shared.shape)).astype(np.float32) for i in range(args.systems)
    }

    start, cpu_start = time.perf_counter(), time.process_time()
    ours = geometry.subspace_geometry(reps, k=args.k)
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    start, cpu_start = time.perf_counter(), time.process_time()
    baseline = svd_geometry(reps, args.k)
    base_s, base_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    scale = 37 / args.layers
    print(f"Gram eigenvectors: {ours_s:.2f} s wall, {ours_cpu:.2f} s CPU ({ours_s * scale:.1f} s wall for 37 layers)")
    print(f"full SVD baseline: {base_s:.2f} s wall, {base_cpu:.2f} s CPU ({base_s * scale:.1f} s wall for 37 layers)")
    print(f"speed-up: {base_s / ours_s:.1f}x wall, {base_cpu / ours_cpu:.1f}x CPU")
    print(
        f"median angles {ours.median_angle.min():.1f}..{ours.median_angle.max():.1f} deg; "
        f"max |difference| {np.abs(ours.median_angle - baseline).max():.2e} deg"
    )


if __name__ == "__main__":
    main()
