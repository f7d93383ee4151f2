"""Weight-space interference: every measure against float64 NumPy written here from its definition,
hand counts on planted tensors, planted subspaces, and streaming from sharded bf16 checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import engine.interference.checkpoints as interference_checkpoints
import engine.interference.measures as measures
from engine.checkpoints import open_checkpoint
from engine.errors import CheckpointError, IncompatibleModelsError
from engine.interference import (
    InterferenceSettings,
    analyse_checkpoints,
    build_profile,
    interference_profile,
    kernel,
    neuron_set_overlap,
    tensor_stats,
    with_neuron_overlap,
)
from engine.interference.profile import tensor_group
from engine.interference.subspace import singular_subspaces, subspace_overlap
from engine.merge.executor import MappedReader, ShardReader
from engine.merge.spec import MemorySource
from tests.tiny_models import make_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-5  # float32 sums over a few thousand entries against float64
REPO = Path(__file__).resolve().parent.parent


def numpy_reference(base: np.ndarray, experts: list[np.ndarray], density: float) -> dict:
    """Every sum of one tensor in float64, from the definitions (TIES: per-expert top-k by argsort)."""
    tau = np.stack([e.astype(np.float64) - base.astype(np.float64) for e in experts]).reshape(len(experts), -1)
    n, entries = tau.shape
    magnitude = np.abs(tau)
    conflict = (tau > 0).any(0) & (tau < 0).any(0)
    k = max(1, int(density * entries))
    trimmed = np.zeros_like(tau)
    for i in range(n):
        # Ranked by float32 |τ|, as the merge's sparsifier ranks; ties by position.
        top = np.argsort(-magnitude[i].astype(np.float32), kind="stable")[:k]
        trimmed[i, top] = tau[i, top]
    elected_positive = trimmed.sum(0) >= 0
    agree = np.where(elected_positive, trimmed > 0, trimmed < 0)
    return {
        "base_sq": float((base.astype(np.float64) ** 2).sum()),
        "gram": tau @ tau.T,
        "mass": float(magnitude.sum()),
        "conflict_entries": int(conflict.sum()),
        "conflict_mass": float(magnitude[:, conflict].sum()),
        "ties_kept_entries": int(agree.sum()),
        "ties_kept_mass": float(magnitude[agree].sum()),
    }


def assert_sums_equal(stats, ref: dict, gram_atol: float) -> None:
    """Every sum of `stats` against numpy_reference's: counts exactly, sums within RTOL."""
    assert stats.base_sq == pytest.approx(ref["base_sq"], rel=RTOL)
    np.testing.assert_allclose(stats.gram, ref["gram"], rtol=RTOL, atol=gram_atol)
    assert stats.mass == pytest.approx(ref["mass"], rel=RTOL)
    assert stats.conflict_entries == ref["conflict_entries"]
    assert stats.conflict_mass == pytest.approx(ref["conflict_mass"], rel=RTOL)
    assert stats.ties_kept_entries == ref["ties_kept_entries"]
    assert stats.ties_kept_mass == pytest.approx(ref["ties_kept_mass"], rel=RTOL)


def random_tensors(shape, n=3, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("chunk_rows", [None, 7])  # whole, and streamed in row blocks
def test_tensor_sums_equal_numpy_float64(density, chunk_rows):
    base, experts = random_tensors((60, 40), n=3, seed=1)
    stats = tensor_stats(MemorySource(base, experts, chunk_rows), "w", density, rank=0)
    ref = numpy_reference(base.numpy(), [e.numpy() for e in experts], density)
    assert_sums_equal(stats, ref, gram_atol=1e-6)
    assert stats.numel == 2400 and stats.subspace is None


@pytest.mark.parametrize("chunk_rows", [None, 300])
def test_ties_counts_on_large_bf16_tensors_with_tied_magnitudes(chunk_rows, monkeypatch):
    """Above measures.EXACT_BELOW entries the threshold is bracketed from a sample; bf16 values tie at
    the threshold, which TIES breaks by flat position (NumPy's stable argsort does the same)."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1100, 1000, generator=g).bfloat16().float()
    experts = [(base + 0.05 * torch.randn(1100, 1000, generator=g)).bfloat16().float() for _ in range(3)]
    ref = numpy_reference(base.numpy(), [e.numpy() for e in experts], 0.3)
    assert base.numel() >= measures.EXACT_BELOW
    stats = tensor_stats(MemorySource(base, experts, chunk_rows), "w", 0.3, rank=0)
    assert stats.ties_kept_entries == ref["ties_kept_entries"]
    assert stats.ties_kept_mass == pytest.approx(ref["ties_kept_mass"], rel=RTOL)
    assert stats.conflict_entries == ref["conflict_entries"]
    # A sample that misleads the bracket falls back to the merge's exact radix select.
    empty = np.zeros(len(experts), np.float32)
    monkeypatch.setattr(measures, "_brackets", lambda samples, k, numel: (empty, empty))
    missed = tensor_stats(MemorySource(base, experts, chunk_rows), "w", 0.3, rank=0)
    assert missed.ties_kept_entries == ref["ties_kept_entries"]


def _as_kind(t: torch.Tensor, kind: str, role: str) -> torch.Tensor:
    """`t` stored as `kind`; "mixed" stores the base as bf16 and the experts as float16."""
    dtype = {"bf16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}.get(kind)
    return t.to(dtype or (torch.bfloat16 if role == "base" else torch.float16))


@pytest.mark.parametrize("kind", ["bf16", "float32", "float64", "mixed"])
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("chunk_rows", [None, 9])
def test_every_sum_equals_numpy_for_each_stored_dtype_and_expert_count(kind, n, chunk_rows):
    """The compiled pass is generated per expert count and reads bf16 bits, float32 and float64 as they
    are (any other dtype converted): every sum against float64 NumPy on the stored values, with the
    TIES threshold bracketed from a sample (300 × 250 entries)."""
    g = torch.Generator().manual_seed(n)
    base = _as_kind(torch.randn(300, 250, generator=g) * 0.02, kind, "base")
    experts = [_as_kind(base.double() + 0.002 * torch.randn(300, 250, generator=g), kind, "expert") for _ in range(n)]
    assert base.numel() >= measures.EXACT_BELOW
    stats = tensor_stats(MemorySource(base, experts, chunk_rows), "w", 0.3, rank=0)
    ref = numpy_reference(base.double().numpy(), [e.double().numpy() for e in experts], 0.3)
    assert_sums_equal(stats, ref, gram_atol=1e-9)


@pytest.mark.parametrize("bound", [0.0, 1.0])  # a bracket below every |τ|, and one above every |τ|
def test_a_bracket_that_misses_the_threshold_on_either_side_costs_a_walk_not_the_result(bound, monkeypatch):
    base, experts = random_tensors((400, 200), n=3, seed=4)
    ref = numpy_reference(base.numpy(), [e.numpy() for e in experts], 0.2)
    bracket = np.full(3, bound, np.float32)
    monkeypatch.setattr(measures, "_brackets", lambda samples, k, numel: (bracket, bracket))
    stats = tensor_stats(MemorySource(base, experts, 50), "w", 0.2, rank=0)
    assert stats.ties_kept_entries == ref["ties_kept_entries"]
    assert stats.ties_kept_mass == pytest.approx(ref["ties_kept_mass"], rel=RTOL)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["base", "expert"])
def test_a_non_finite_entry_is_refused_naming_the_tensor(bad, where):
    base, experts = random_tensors((40, 30), n=2)
    (base if where == "base" else experts[1])[7, 3] = bad
    with pytest.raises(measures.NonFiniteTensorError, match="'w'.*NaN/Inf"):
        tensor_stats(MemorySource(base, experts, 8), "w", 0.5, rank=0)


def test_radix_select_equals_numpy_sort_with_repeated_values():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(20000), np.repeat([0.5, -0.75, 1.25], 3000)]).astype(np.float32)
    rng.shuffle(values)
    magnitude = np.abs(values)
    low, high = np.float32(0.3), np.float32(1.5)
    inside = np.sort(magnitude[(magnitude >= low) & (magnitude <= high)])[::-1]
    for need in (1, 17, 2500, 3001, inside.size):
        bits, greater, equal = kernel.kth_largest_in_bracket(values, low, high, need)
        value = np.array([bits], np.int32).view(np.float32)[0]
        assert value == inside[need - 1]
        assert greater == np.count_nonzero(inside > value) and equal == np.count_nonzero(inside == value)
    assert kernel.kth_largest_in_bracket(values, low, high, inside.size + 1)[0] == -1


def test_sample_bracket_encloses_the_sample_quantiles_within_one_bin():
    rng = np.random.default_rng(1)
    magnitude = np.abs(rng.standard_normal(50000)).astype(np.float32)
    magnitude[:500] = 0  # unchanged entries: τ = 0 exactly
    ordered = np.sort(magnitude)
    lo, hi = kernel.sample_bracket(magnitude, 30000, 40000)
    assert lo <= ordered[30000] and hi >= ordered[40000]
    bits = ordered.view(np.int32)
    bin_width = 1 << max(0, int(np.ceil(np.log2((bits[-1] - bits[0] + 1) / kernel.BRACKET_BINS))))
    assert np.float32(lo).view(np.int32) > bits[30000] - bin_width
    assert np.float32(hi).view(np.int32) < bits[40000] + bin_width


@pytest.mark.parametrize("ties", [-1, 0, 1, 777, 1500])
def test_tie_cutoff_is_the_place_after_the_last_kept_tie(ties):
    rng = np.random.default_rng(2)
    row = rng.choice(np.float32([-2, -1, 1, 2, 3]), size=5000)
    equal = np.flatnonzero(np.abs(row) == 2)
    assert equal.size > 1500
    expected = row.size if ties < 0 else (0 if ties == 0 else equal[ties - 1] + 1)
    assert kernel.tie_cutoff(row, np.float32(2), ties) == expected


@pytest.mark.parametrize("exact_below", [1 << 20, 0])  # threshold from every entry, and from a sample
def test_ties_at_the_threshold_spread_over_many_blocks_are_kept_by_position(exact_below, monkeypatch):
    """Task vectors of four magnitudes, so the threshold value is shared by thousands of entries over
    many blocks: the first blocks keep all of theirs, one block keeps only its first ones, the rest none."""
    monkeypatch.setattr(measures, "EXACT_BELOW", exact_below)
    g = torch.Generator().manual_seed(3)
    levels = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    base = torch.randn(90, 100, generator=g).bfloat16().float()
    experts = [base + levels[torch.randint(0, 4, (90, 100), generator=g)] for _ in range(3)]
    ref = numpy_reference(base.numpy(), [e.numpy() for e in experts], 0.3)
    magnitude = np.abs(np.stack([(e - base).numpy().reshape(-1) for e in experts]))
    # Density 0.3 keeps 2700 per expert, all of magnitude 2, out of about 4500 such ties: of the 7 blocks
    # of 13 rows, 2 hold fewer than 2700.
    assert ((magnitude == 2).sum(1) > 2700).all()
    for chunk_rows in (None, 13):
        stats = tensor_stats(MemorySource(base, experts, chunk_rows), "w", 0.3, rank=0)
        assert stats.ties_kept_entries == ref["ties_kept_entries"]
        assert stats.ties_kept_mass == pytest.approx(ref["ties_kept_mass"], rel=RTOL)
        assert stats.conflict_entries == ref["conflict_entries"]


def test_sign_conflict_and_ties_drop_by_hand():
    base = torch.zeros(2, 2)
    # flat entries: e0 e1 e2 e3
    t1 = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    t2 = torch.tensor([[1.0, 2.0], [-4.0, 0.25]])
    stats = tensor_stats(MemorySource(base, [t1, t2]), "w", density=0.5, rank=0)
    # e1 (−1 vs 2) and e2 (2 vs −4) disagree in sign.
    assert stats.conflict_entries == 2
    assert stats.mass == pytest.approx(13.75) and stats.conflict_mass == pytest.approx(9.0)
    # Density 0.5 keeps two entries each: t1 → e0 (3), e2 (2); t2 → e2 (−4), e1 (2).
    # Trimmed sums: e0 3, e1 2, e2 −2, e3 0 → elected + + − + (a zero sum elects +).
    # Kept: t1 at e0; t2 at e1 and e2 → 3 of 8 pairs, mass 3 + 2 + 4.
    assert stats.ties_kept_entries == 3
    assert stats.ties_kept_mass == pytest.approx(9.0)
    profile = build_profile([stats], ["a", "b"], blocks=0, signature="")
    assert profile.sign_conflict[0] == pytest.approx(0.5)
    assert profile.sign_conflict_mass[0] == pytest.approx(9 / 13.75)
    assert profile.ties_dropped[0] == pytest.approx(5 / 8)
    assert profile.ties_dropped_mass[0] == pytest.approx(1 - 9 / 13.75)


def test_profile_norms_and_cosines_per_block_equal_numpy():
    torch.manual_seed(0)
    names = {
        "model.embed_tokens.weight": (50, 16),
        "model.layers.0.mlp.up_proj.weight": (32, 16),
        "model.layers.0.input_layernorm.weight": (16,),
        "model.layers.1.mlp.up_proj.weight": (32, 16),
        "model.norm.weight": (16,),
    }
    tensors = {name: random_tensors(shape, n=2, seed=i) for i, (name, shape) in enumerate(names.items())}
    stats = [tensor_stats(MemorySource(b, e), name, 0.3, rank=4) for name, (b, e) in tensors.items()]
    profile = build_profile(stats, ["x", "y"], blocks=2, signature="sig")
    assert profile.groups == ("embed", "1", "2", "head")
    assert profile.positions.tolist() == [0, 1, 2, 3]
    for row, group in enumerate(profile.groups):
        members = [name for name in names if tensor_group(name) == group]
        base = np.concatenate([tensors[m][0].numpy().astype(np.float64).ravel() for m in members])
        tau = np.stack(
            [
                np.concatenate([(tensors[m][1][i].double() - tensors[m][0].double()).numpy().ravel() for m in members])
                for i in range(2)
            ]
        )
        norms = np.linalg.norm(tau, axis=1)
        np.testing.assert_allclose(profile.norms[row], norms, rtol=RTOL)
        np.testing.assert_allclose(profile.relative_norms[row], norms / np.linalg.norm(base), rtol=RTOL)
        cosine = tau[0] @ tau[1] / (norms[0] * norms[1])
        assert profile.cosine[row, 0, 1] == pytest.approx(cosine, abs=1e-5)
        assert profile.cosine[row, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(profile.subspace_overlap[3]).all()  # the head holds only a vector here
    # The score: mean of |τ|-weighted sign conflict and the pairs' subspace collision.
    collision = profile.subspace_overlap[:3, 0, 1] * (1 - profile.cosine[:3, 0, 1]) / 2
    np.testing.assert_allclose(profile.score[:3], (profile.sign_conflict_mass[:3] + collision) / 2, rtol=1e-12)
    assert profile.score[3] == pytest.approx(profile.sign_conflict_mass[3])


def _orthonormal(rows, k, generator):
    return torch.linalg.qr(torch.randn(rows, k, generator=generator, dtype=torch.float64)).Q


def test_principal_angle_overlap_is_one_for_shared_and_zero_for_orthogonal_subspaces():
    g = torch.Generator().manual_seed(3)
    u = _orthonormal(40, 8, g)
    v = _orthonormal(30, 8, g)
    a = (u[:, :4] * torch.tensor([5.0, 4, 3, 2], dtype=torch.float64)) @ v[:, :4].T
    same = (u[:, :4] * torch.tensor([1.0, 7, 2, 9], dtype=torch.float64)) @ v[:, :4].T  # same subspaces, other weights
    other = (u[:, 4:] * torch.tensor([5.0, 4, 3, 2], dtype=torch.float64)) @ v[:, 4:].T  # orthogonal ones
    bases = [singular_subspaces(lambda m=m: iter([m]), (40, 30), 4) for m in (a, same, other)]
    assert subspace_overlap(bases[0], bases[1]) == pytest.approx(1.0, abs=1e-9)
    assert subspace_overlap(bases[0], bases[2]) == pytest.approx(0.0, abs=1e-9)
    assert singular_subspaces(lambda: iter([torch.zeros(40, 30)]), (40, 30), 4) is None


def test_subspace_overlap_equals_numpy_svd_on_low_rank_updates():
    g = torch.Generator().manual_seed(5)
    shared = _orthonormal(64, 3, g)
    base = torch.randn(64, 48, generator=g)
    experts = []
    for _ in range(2):
        u = torch.linalg.qr(torch.cat([shared, torch.randn(64, 3, generator=g, dtype=torch.float64)], 1)).Q
        v = _orthonormal(48, 6, g)
        tau = (u * torch.linspace(6, 1, 6, dtype=torch.float64)) @ v.T + 1e-3 * torch.randn(
            64, 48, generator=g, dtype=torch.float64
        )
        experts.append((base.double() + tau).float())
    whole = tensor_stats(MemorySource(base, experts), "w", 0.5, rank=6)
    streamed = tensor_stats(MemorySource(base, experts, chunk_rows=10), "w", 0.5, rank=6)
    svds = [np.linalg.svd(e.numpy().astype(np.float64) - base.numpy().astype(np.float64)) for e in experts]
    (u0, _, vt0), (u1, _, vt1) = svds
    expected = ((u0[:, :6].T @ u1[:, :6]) ** 2).sum() / 12 + ((vt0[:6] @ vt1[:6].T) ** 2).sum() / 12
    assert whole.rank == 6
    assert whole.subspace[0, 1] == pytest.approx(expected, abs=1e-3)
    assert streamed.subspace[0, 1] == pytest.approx(expected, abs=1e-3)
    assert whole.subspace[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_neuron_overlap_is_the_jaccard_of_each_pair_and_joins_the_score():
    sets = [
        [np.array([1, 2, 3]), np.array([], dtype=int)],
        [np.array([2, 3, 4, 5]), np.array([], dtype=int)],
    ]
    overlap = neuron_set_overlap(sets)
    assert overlap[0, 0, 1] == pytest.approx(2 / 5) and overlap[0, 0, 0] == 1.0
    assert (overlap[1] == 0).all()  # two empty sets share nothing
    base, experts = random_tensors((8, 8), n=2)
    stats = [tensor_stats(MemorySource(base, experts), f"model.layers.{b}.mlp.up_proj.weight", 0.5, 2) for b in (0, 1)]
    profile = with_neuron_overlap(build_profile(stats, ["a", "b"], 2, "w"), overlap, "lape")
    assert profile.neuron_overlap[0, 0, 1] == pytest.approx(2 / 5)
    collision = profile.subspace_overlap[0, 0, 1] * (1 - profile.cosine[0, 0, 1]) / 2
    assert profile.score[0] == pytest.approx((profile.sign_conflict_mass[0] + collision + 2 / 5) / 3)
    assert profile.signature == "w|lape"


@pytest.fixture
def bf16_zoo(model_root):
    base_model = make_model(seed=0, hidden_size=32, intermediate_size=96, num_hidden_layers=3)
    base = save_checkpoint(
        model_root / "base",
        seed=0,
        dtype=torch.bfloat16,
        max_shard_size="20KB",
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=3,
    )
    experts = [
        save_checkpoint(
            model_root / f"expert{i}",
            seed=10 + i,
            dtype=torch.bfloat16,
            max_shard_size="20KB",
            base=base_model,
            delta_scale=0.02,
            hidden_size=32,
            intermediate_size=96,
            num_hidden_layers=3,
        )
        for i in range(3)
    ]
    return base, experts


def _whole_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_streamed_sharded_bf16_checkpoints_equal_the_whole_tensor_result(bf16_zoo):
    base_path, expert_paths = bf16_zoo
    base, experts = open_checkpoint(base_path), [open_checkpoint(p) for p in expert_paths]
    assert len(base.shards) > 2
    settings = InterferenceSettings(density=0.3, rank=4)
    streamed = analyse_checkpoints(
        base, experts, settings, chunk_elements=2000, stream_above=0
    )  # several blocks per matrix
    whole_base, whole_experts = _whole_tensors(base_path), [_whole_tensors(p) for p in expert_paths]
    stats = [
        tensor_stats(
            MemorySource(whole_base[name].float(), [w[name].float() for w in whole_experts]),
            name,
            settings.density,
            settings.rank,
            settings.power_iters,
            settings.seed,
        )
        for name in base.tensor_names
    ]
    whole = build_profile(stats, [e.name for e in experts], 3, settings.signature())
    assert streamed.groups == ("embed", "1", "2", "3", "head")
    for field in (
        "norms",
        "relative_norms",
        "cosine",
        "sign_conflict",
        "ties_dropped",
        "sign_conflict_mass",
        "ties_dropped_mass",
    ):
        np.testing.assert_allclose(getattr(streamed, field), getattr(whole, field), rtol=1e-5, err_msg=field)
    np.testing.assert_allclose(streamed.subspace_overlap, whole.subspace_overlap, atol=1e-4)
    # And against float64 NumPy on the bf16 values: block 2's cosine of experts 0 and 1.
    members = [n for n in whole_base if tensor_group(n) == "2"]
    tau = [
        np.concatenate([(w[n].double() - whole_base[n].double()).numpy().ravel() for n in members])
        for w in whole_experts
    ]
    assert streamed.cosine[2, 0, 1] == pytest.approx(
        tau[0] @ tau[1] / np.linalg.norm(tau[0]) / np.linalg.norm(tau[1]), abs=1e-5
    )


def test_mapped_blocks_equal_read_blocks_and_survive_release(bf16_zoo, tmp_path):
    base_path, _ = bf16_zoo
    checkpoint = open_checkpoint(base_path)
    mapped, copied = MappedReader(), ShardReader()
    for name in checkpoint.tensor_names:
        shard, entry = checkpoint.entries()[name]
        rows = entry.shape[0] if entry.shape else 1
        for start, stop in [(0, rows), (rows // 3, rows), (0, max(1, rows // 2))]:
            view = mapped.read(shard, entry, start, stop)
            mapped.release(shard, entry, start, stop)  # the pages leave resident memory, the data stays
            assert torch.equal(view, copied.read(shard, entry, start, stop))
            assert torch.equal(mapped.read(shard, entry, start, stop, torch.float32), view.float())
    # A shard cut short is refused naming it, not read past its end.
    shard, entry = checkpoint.entries()[checkpoint.tensor_names[-1]]
    cut = tmp_path / shard.name
    cut.write_bytes(shard.read_bytes()[: entry.end - 2])
    with pytest.raises(CheckpointError, match=rf"{cut.name}.*ends early"):
        MappedReader().read(cut, entry, 0, entry.shape[0] if entry.shape else 1)
    mapped.close()
    copied.close()


def test_the_profile_does_not_depend_on_how_many_threads_read(bf16_zoo):
    base_path, expert_paths = bf16_zoo
    base, experts = open_checkpoint(base_path), [open_checkpoint(p) for p in expert_paths]
    settings = InterferenceSettings(density=0.3, rank=0)
    one = analyse_checkpoints(base, experts, settings, threads=1, chunk_elements=2000, stream_above=0)
    three = analyse_checkpoints(base, experts, settings, threads=3, chunk_elements=2000, stream_above=0)
    for field in ("norms", "cosine", "sign_conflict_mass", "ties_dropped", "score"):
        np.testing.assert_array_equal(getattr(one, field), getattr(three, field))


def test_compiled_kernels_are_kept_on_disk_for_later_processes(tmp_path):
    """A generated kernel is written once under the cache folder and its machine code cached beside it:
    a second process loads it (a cache hit) instead of compiling (a miss)."""
    script = (
        "import numpy as np\n"
        "from engine.interference import kernel\n"
        "fused = kernel.fused_pass(2)\n"
        "base = np.zeros(8, np.uint16)\n"
        "fused(base, (base, base), np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(9),\n"
        "      np.zeros(4, np.int64), np.zeros((2, 8), np.float32), np.float32(0), np.float32(1))\n"
        "print(sum(fused.stats.cache_hits.values()), sum(fused.stats.cache_misses.values()))\n"
    )
    env = {**os.environ, "MERGESCOPE_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout.split() == ["0", "1"]  # compiled
    assert runs[1].stdout.split() == ["1", "0"]  # loaded
    assert len(list((tmp_path / "cache" / "kernels").glob("fused_pass_*.py"))) == 1


def test_profile_is_cached_by_fingerprints(bf16_zoo, monkeypatch):
    base_path, expert_paths = bf16_zoo
    base, experts = open_checkpoint(base_path), [open_checkpoint(p) for p in expert_paths]
    first = interference_profile(base, experts, names=["a", "b", "c"])

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a cached profile")

    monkeypatch.setattr(interference_checkpoints, "analyse_checkpoints", refuse)
    again = interference_profile(open_checkpoint(base_path), [open_checkpoint(p) for p in expert_paths])
    np.testing.assert_array_equal(again.score, first.score)
    np.testing.assert_array_equal(again.cosine, first.cosine)
    assert again.groups == first.groups and again.experts == tuple(e.name for e in experts)
    with pytest.raises(AssertionError):  # other settings are another key
        interference_profile(base, experts, InterferenceSettings(density=0.9))


def test_bad_inputs_are_refused_naming_file_and_tensor(bf16_zoo, model_root):
    base_path, expert_paths = bf16_zoo
    broken = model_root / "broken"
    broken.mkdir()
    for f in expert_paths[0].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    shard = sorted(broken.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    base = open_checkpoint(base_path)
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*{name}.*NaN"):
        analyse_checkpoints(base, [open_checkpoint(broken)])
    with pytest.raises(CheckpointError, match="at least one expert"):
        analyse_checkpoints(base, [])
    other = save_checkpoint(model_root / "wider", seed=1, hidden_size=48, num_hidden_layers=3, intermediate_size=96)
    with pytest.raises(IncompatibleModelsError):
        analyse_checkpoints(base, [open_checkpoint(other)])
    with pytest.raises(ValueError, match="density"):
        InterferenceSettings(density=0)
