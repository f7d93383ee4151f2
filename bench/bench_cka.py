"""Benchmark: full L × L CKA from one Gram per layer vs a straightforward per-pair implementation.

    .venv/bin/python bench/bench_cka.py                       # L=37, n=1024, d=2048, 16 sampled pairs
    .venv/bin/python bench/bench_cka.py --pairs all           # every pair of the baseline (slow on CPU)
    .venv/bin/python bench/bench_cka.py --debiased

The baseline recomputes both centred Gram matrices for every (i, j) pair, as a per-pair loop
over `linear_cka` would. With --pairs K it times K random pairs and extrapolates to all L²
pairs (stated in the output); the sampled pairs' values are checked against the fast matrix.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from engine import cka  # noqa: E402


def per_pair(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """The straightforward way: two fresh Gram matrices per pair, float64."""
    transform = cka.u_centred_gram if debiased else cka.centred_gram
    kx, ky = transform(x), transform(y)
    return float((kx * ky).sum() / math.sqrt(float((kx * kx).sum()) * float((ky * ky).sum())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=37)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--pairs", default="16", help="number of baseline pairs to time, or 'all'")
    parser.add_argument("--debiased", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
        f"torch threads {torch.get_num_threads()}, L={args.layers} n={args.n} d={args.d} debiased={args.debiased}"
    )

    g = torch.Generator().manual_seed(args.seed)
    # Layers drift as a random walk so CKA values spread over (0, 1) instead of all ≈ 0.
    a = torch.empty(args.layers, args.n, args.d)  # (layers, n, d_model) float32
    b = torch.empty_like(a)
    a[0] = torch.randn(args.n, args.d, generator=g)
    b[0] = a[0] + torch.randn(args.n, args.d, generator=g)
    for l in range(1, args.layers):
        a[l] = a[l - 1] + 0.3 * torch.randn(args.n, args.d, generator=g)
        b[l] = b[l - 1] + 0.3 * torch.randn(args.n, args.d, generator=g)
    a, b = a.to(device), b.to(device)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    fast = cka.cka_matrix(a, b, debiased=args.debiased, device=device)
    sync()
    fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    all_pairs = [(i, j) for i in range(args.layers) for j in range(args.layers)]
    if args.pairs == "all":
        sample = all_pairs
    else:
        idx = torch.randperm(len(all_pairs), generator=g)[: int(args.pairs)].tolist()
        sample = [all_pairs[k] for k in idx]
    start, cpu_start = time.perf_counter(), time.process_time()
    slow = [per_pair(a[i], b[j], args.debiased) for i, j in sample]
    sync()
    sample_s, sample_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    slow_s = sample_s * len(all_pairs) / len(sample)
    slow_cpu = sample_cpu * len(all_pairs) / len(sample)
    max_diff = max(abs(v - fast.values[i, j]) for v, (i, j) in zip(slow, sample))

    # CPU seconds of this process are reported too: on a shared machine they move less than wall time.
    print(f"fast L×L matrix ({len(all_pairs)} pairs): {fast_s:.2f} s wall, {fast_cpu:.2f} s CPU")
    kind = (
        "measured"
        if len(sample) == len(all_pairs)
        else f"extrapolated from {len(sample)} timed pairs ({sample_s:.2f} s wall)"
    )
    print(f"per-pair baseline: {slow_s:.1f} s wall, {slow_cpu:.1f} s CPU ({kind})")
    print(
        f"speed-up: {slow_s / fast_s:.1f}x wall, {slow_cpu / fast_cpu:.1f}x CPU; max |difference| on compared pairs: {max_diff:.2e}"
    )
    print(f"CKA range in matrix: {fast.values.min():.3f} .. {fast.values.max():.3f}")


if __name__ == "__main__":
    main()
