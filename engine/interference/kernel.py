"""Compiled kernels (numba) behind engine.interference.measures.

`fused_pass(n)` forms every sum over a row block of a base and its n experts in one loop over the
entries: each stored value is read once and the task vectors stay in vector registers, where array
libraries would take some thirty passes over each block. It is generated for the number of experts,
so every per-expert quantity is a local variable the compiler keeps in a register (the loop over
entries vectorises; loops over experts inside it would not), and compiled once per process and
input kind.

Inputs are flat arrays of one kind: bf16 as its raw bits (uint16, widened by a shift), float32 or
float64. τ_i = expert_i − base is formed in the work dtype (float32 unless the inputs are float64),
as the merge executor forms it, so TIES thresholds compare the same values bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from engine.settings import get_settings

STEP = 1024  # entries per step: float32 partial sums over a step, added into float64 totals
SAMPLE_RUN = 32  # consecutive entries per sampled run: one 64-byte cache line of bf16
BRACKET_BINS = 1 << 16  # bins of the sample bracket: their edges widen a bracket by a 2^-16 share of its span
SELECT_BINS_LOG2 = 12  # bins per round of the threshold select: their counters stay in the L1 cache
# Reassociation and contraction let sums vectorise; NaN/Inf keep their IEEE meaning, so a non-finite input
# still shows in the sums.
FLAGS = {"reassoc", "contract", "nsz"}
# sums: Σ θ_base², Σ|τ|, Σ|τ| at sign conflicts, Σ|τ| TIES keeps, then the Gram matrix row by row.
BASE_SQ, MASS, CONFLICT_MASS, KEPT_MASS, GRAM = range(5)
# counts: entries with a sign conflict, (expert, entry) pairs TIES keeps, then per expert |τ| > hi.
CONFLICTS, KEPT, ABOVE = range(3)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is `bits` (a bf16 value's bits shifted into the high half)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _float32_bits(typingctx, value):
    """The bit pattern of a float32 as an int32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


def widen(value, zero):
    """`value` (bf16 bits or a float) as the work dtype of `zero`; compiled only (see its overload)."""
    raise NotImplementedError("widen runs inside compiled kernels only")


@overload(widen)
def _widen(value, zero):
    if value == types.uint16:
        if zero == types.float32:
            return lambda value, zero: _float32_from_bits(np.uint32(value) << np.uint32(16))
        return lambda value, zero: np.float64(_float32_from_bits(np.uint32(value) << np.uint32(16)))
    if zero == types.float32:
        return lambda value, zero: np.float32(value)
    return lambda value, zero: np.float64(value)


def _each(experts: range, template: str, sep: str = "; ") -> str:
    """`template` written once per expert i, joined by `sep`."""
    return sep.join(template.format(i=i) for i in experts)


_COMPILING = threading.Lock()


def _compile(source: str, name: str):
    """_load under a lock: tensors analysed in parallel threads ask for the same kernel at once."""
    with _COMPILING:
        return _load(source, name)


@functools.cache
def _load(source: str, name: str):
    """The function `name` of generated `source`, compiled. The source is written as a module under the
    cache folder (named by its hash and this file's, written once, atomically), so numba caches the
    machine code beside it and a later process loads it instead of compiling again (about a second
    per kernel)."""
    module_source = (
        "import numpy as np\n"
        "from numba import njit\n\n"
        "from engine.interference.kernel import (\n"
        "    ABOVE, BASE_SQ, CONFLICT_MASS, CONFLICTS, FLAGS, GRAM, KEPT, KEPT_MASS, MASS, STEP, widen\n"
        ")\n\n\n"
        f"@njit(cache=True, nogil=True, fastmath=FLAGS)\n{source.lstrip()}"
    )
    # This file's text is hashed in too: the cached machine code holds its constants and `widen`.
    this_file = Path(__file__).read_bytes()
    digest = hashlib.sha256(f"{module_source}|numba {numba.__version__}|".encode() + this_file).hexdigest()[:16]
    folder = get_settings().cache_dir / "kernels"
    path = folder / f"{name}_{digest}.py"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_text(module_source)
        partial.replace(path)
    spec = importlib.util.spec_from_file_location(f"mergescope_kernel_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cached code finds its module by name
    spec.loader.exec_module(module)
    return getattr(module, name)


def _fused_source(n: int) -> str:
    """Python source of fused_pass for n experts (see fused_pass for what it computes)."""
    experts = range(n)
    each = functools.partial(_each, experts)

    pairs = [(i, k) for i in experts for k in range(i + 1)]
    largest = smallest = "t0"
    for i in range(1, n):
        largest, smallest = f"max({largest}, t{i})", f"min({smallest}, t{i})"
    return f"""
def fused_pass(base, experts, lo, hi, sums, counts, pending, zero, one):
    {each("e{i} = experts[{i}]")}
    {each("lo{i} = lo[{i}]")}
    {each("hi{i} = hi[{i}]")}
    waits_at = np.empty(STEP, np.bool_)
    places = np.empty(STEP, np.int64)
    filled = 0
    total = base.shape[0]
    for start in range(0, total, STEP):
        stop = min(total, start + STEP)
        # Slices indexed from 0: the compiler then knows no index wraps around, and loads vectors.
        b_step = base[start:stop]
        {each("x{i} = e{i}[start:stop]")}
        base_sq = zero; mass = zero; conflict_mass = zero; conflicts = zero; kept = zero; kept_mass = zero
        {"; ".join(f"g{i}_{k} = zero" for i, k in pairs)}
        {each("above{i} = zero")}
        for j in range(stop - start):
            b = widen(b_step[j], zero)
            base_sq += b * b
            {each("t{i} = widen(x{i}[j], zero) - b", chr(10) + " " * 12)}
            {each("a{i} = abs(t{i})")}
            {"; ".join(f"g{i}_{k} += t{i} * t{k}" for i, k in pairs)}
            m = {each("a{i}", " + ")}
            mass += m
            conflict = ({largest} > zero) & ({smallest} < zero)
            conflict_mass += m if conflict else zero
            conflicts += one if conflict else zero
            # TIES: float32 magnitudes against the float32 brackets, as the merge's sparsifier compares.
            {each("f{i} = np.float32(a{i})")}
            {each("k{i} = f{i} > hi{i}")}
            {each("above{i} += one if k{i} else zero")}
            kept_sum = {each("(t{i} if k{i} else zero)", " + ")}
            # Inside [lo, hi]: at least lo and not above hi (every bracket has lo ≤ hi).
            waits = {each("((f{i} >= lo{i}) != k{i})", " | ")}
            waits_at[j] = waits
            elected = zero if waits else (one if kept_sum >= zero else -one)
            {each("take{i} = k{i} & (t{i} * elected > zero)")}
            kept += {each("(one if take{i} else zero)", " + ")}
            kept_mass += {each("(a{i} if take{i} else zero)", " + ")}
        sums[BASE_SQ] += base_sq; sums[MASS] += mass; sums[CONFLICT_MASS] += conflict_mass
        sums[KEPT_MASS] += kept_mass
        {"; ".join(f"sums[GRAM + {i * n + k}] += g{i}_{k}" for i, k in pairs)}
        {"; ".join(f"sums[GRAM + {k * n + i}] += g{i}_{k}" for i, k in pairs if i != k) or "pass"}
        counts[CONFLICTS] += int(conflicts); counts[KEPT] += int(kept)
        {each("counts[ABOVE + {i}] += int(above{i})")}
        # Branch-free compaction of the waiting entries' places (a branch per entry would be mispredicted
        # at each of them), then their τ written out.
        found = 0
        for j in range(stop - start):
            places[found] = j
            found += waits_at[j]
        for p in range(found):
            j = places[p]
            b = widen(b_step[j], zero)
            {each("pending[{i}, filled + p] = widen(x{i}[j], zero) - b")}
        filled += found
    return filled
"""


def fused_pass(n: int):
    """The compiled pass for n experts: fused_pass(base, experts, lo, hi, sums, counts, pending, zero, one)
    adds one block's sums into `sums` (float64) and `counts` (int64) and returns how many entries it
    left in `pending`.

    base: (entries,); experts: a tuple of n (entries,) arrays of base's kind; lo, hi: (n,) float32,
    each expert's bracket around its TIES threshold; pending: (n, entries) in the work dtype; zero,
    one: scalars of the work dtype.

    An entry where every |τ_i| lies outside its expert's bracket is settled here: TIES keeps τ_i when
    |τ_i| > hi_i and the entry's elected sign (of the kept τ's sum, + when it is zero) agrees. An entry
    where some |τ_i| lies inside [lo_i, hi_i] waits in `pending`, in flat order, for the exact thresholds.
    """
    return _compile(_fused_source(n), "fused_pass")


@njit(cache=True, nogil=True)
def sample_magnitudes(base, experts, step, out):
    """out[i, s] = |τ_i| as float32 over flat inputs of one kind (as fused_pass takes), in runs of
    SAMPLE_RUN consecutive entries starting every `step` entries: a run fills the cache lines it
    touches, where single entries `step` apart would each cost one read from memory."""
    for s in range(out.shape[1]):
        at = (s // SAMPLE_RUN) * step + s % SAMPLE_RUN
        b = widen(base[at], 0.0)
        for i in range(len(experts)):
            out[i, s] = np.float32(abs(widen(experts[i][at], 0.0) - b))


@njit(cache=True, nogil=True)
def sample_bracket(magnitudes, rank_low, rank_high):
    """(lo, hi) float32 with lo ≤ the rank_low-th and hi ≥ the rank_high-th smallest of the float32
    `magnitudes` (ranks from 0), from one count in BRACKET_BINS bins over their bit patterns (whose
    order is the order of non-negative values): each is the outer edge of the bin holding its rank."""
    first, last = np.int32(0x7F800000), np.int32(0)
    for v in magnitudes:
        bits = _float32_bits(v)
        first, last = min(first, bits), max(last, bits)
    shift = 0
    while ((last - first) >> shift) >= BRACKET_BINS:
        shift += 1
    bins = np.zeros(((last - first) >> shift) + 1, np.int32)
    for v in magnitudes:
        bins[(_float32_bits(v) - first) >> shift] += 1
    below, b = 0, 0
    while below + bins[b] <= rank_low:
        below += bins[b]
        b += 1
    low = first + (b << shift)
    while below + bins[b] <= rank_high:
        below += bins[b]
        b += 1
    high = min(last, first + ((b + 1) << shift) - 1)
    return _float32_from_bits(np.uint32(low)), _float32_from_bits(np.uint32(high))


@njit(cache=True, nogil=True)
def kth_largest_in_bracket(values, low, high, need):
    """(bits of the need-th largest float32 |v| among the |v| in [low, high], how many are greater, how
    many equal it) for one expert's row of values; bits -1 when fewer than `need` lie inside.

    A radix select on float32 bit patterns, whose order is the order of non-negative values: the
    patterns inside are gathered once; each round counts them in at most 2^SELECT_BINS_LOG2 bins and
    keeps only those of the bin holding the need-th (three rounds at most). No sort, and values
    repeated by the thousand (as bf16 checkpoints' task vectors are) cost nothing extra. Counting goes
    into four interleaved copies of the bins, so repeated values do not wait on each other's increments.
    """
    patterns = np.empty(values.size, np.int32)
    inside = 0
    for v in values:  # branch-free compaction: the next free place advances past a value inside only
        a = np.float32(abs(v))
        patterns[inside] = _float32_bits(a)
        inside += (a >= low) & (a <= high)
    patterns = patterns[:inside]
    if not 1 <= need <= inside:
        return -1, 0, 0
    first, last = patterns.min(), patterns.max()
    greater = 0
    while True:
        shift = 0
        while ((last - first) >> shift) >= (1 << SELECT_BINS_LOG2):
            shift += 1
        width = ((last - first) >> shift) + 1
        copies = np.zeros((4, width), np.int64)
        for p in range(patterns.size):
            copies[p & 3, (patterns[p] - first) >> shift] += 1
        bins = copies.sum(axis=0)
        chosen = width - 1
        while greater + bins[chosen] < need:
            greater += bins[chosen]
            chosen -= 1
        if shift == 0:
            return first + chosen, greater, bins[chosen]
        first, last = first + (chosen << shift), min(last, first + ((chosen + 1) << shift) - 1)
        kept = 0
        for p in range(patterns.size):
            bits = patterns[p]
            patterns[kept] = bits
            kept += (bits >= first) & (bits <= last)
        patterns = patterns[:kept]


@njit(cache=True, nogil=True)
def tie_cutoff(row, threshold, ties):
    """The place in `row` before which the first `ties` entries with float32 |τ| equal to `threshold`
    lie (the merge sparsifier keeps those); len(row) when ties is -1 (it keeps every one)."""
    if ties < 0:
        return row.size
    found = 0
    for start in range(0, row.size, STEP):  # whole steps counted at vector speed, the last one entry by entry
        block = row[start : start + STEP]
        equal = 0
        for v in block:
            equal += np.float32(abs(v)) == threshold
        if found + equal < ties:
            found += equal
            continue
        for p in range(block.size):
            if found == ties:
                return start + p
            found += np.float32(abs(block[p])) == threshold
        return start + block.size
    return row.size


def _settle_source(n: int) -> str:
    """Python source of settle_waiting for n experts (see settle_waiting for what it computes)."""
    each = functools.partial(_each, range(n))
    return f"""
def settle_waiting(waiting, thresholds, cutoffs, zero, one):
    {each("w{i} = waiting[{i}]")}
    {each("th{i} = thresholds[{i}]")}
    {each("cut{i} = cutoffs[{i}]")}
    kept = 0
    kept_mass = 0.0
    total = waiting.shape[1]
    for start in range(0, total, STEP):
        stop = min(total, start + STEP)
        {each("x{i} = w{i}[start:stop]")}
        count = zero; mass = zero
        for j in range(stop - start):
            place = start + j
            {each("t{i} = x{i}[j]; f{i} = np.float32(abs(t{i}))", chr(10) + " " * 12)}
            {each("k{i} = (f{i} > th{i}) | ((f{i} == th{i}) & (place < cut{i}))")}
            kept_sum = {each("(t{i} if k{i} else zero)", " + ")}
            elected = one if kept_sum >= zero else -one
            {each("take{i} = k{i} & (t{i} * elected > zero)")}
            count += {each("(one if take{i} else zero)", " + ")}
            mass += {each("(abs(t{i}) if take{i} else zero)", " + ")}
        kept += int(count)
        kept_mass += mass
    return kept, kept_mass
"""


def settle_waiting(n: int):
    """The compiled settling of what fused_pass left waiting, for n experts: settle_waiting(waiting,
    thresholds, cutoffs, zero, one) → (pairs TIES keeps, their Σ|τ|) over waiting (n, entries) in flat
    order. Expert i keeps |τ_i| > thresholds[i], and |τ_i| equal to it before place cutoffs[i]
    (tie_cutoff: the merge sparsifier's tie rule); then the entry's elected sign (of the kept τ's sum,
    + when it is zero) decides which kept τ agree."""
    return _compile(_settle_source(n), "settle_waiting")
