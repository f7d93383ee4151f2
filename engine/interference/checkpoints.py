"""The interference profile of a base and experts on disk: streamed tensor by tensor, row block by row,
as views of the mapped shard files (nothing copied; each tensor's pages let go when it is done), and
cached by the checkpoints' fingerprints in the content-addressed cache."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

import cache
from engine.checkpoints import Checkpoint, check_compatible, check_finite
from engine.errors import CheckpointError
from engine.interference.measures import NonFiniteTensorError, TensorStats, subspace_stats, tensor_stats
from engine.interference.profile import InterferenceProfile, build_profile
from engine.merge.executor import CHUNK_ELEMENTS, SAFETENSORS_DTYPES, STREAM_ABOVE, MappedReader
from engine.settings import cache_store

INTERFERENCE_VERSION = "1"
Progress = Callable[[int, int, str], None]  # (tensors done, tensors, what runs)


@dataclass(frozen=True)
class InterferenceSettings:
    """density: the share of each task vector TIES keeps; rank: k of the singular subspaces (0 skips
    them); power_iters: randomized-SVD refinement rounds; seed: its random directions."""

    density: float = 0.2
    rank: int = 16
    power_iters: int = 1
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.density <= 1:
            raise ValueError(f"TIES density must lie in (0, 1], got {self.density}")
        if self.rank < 0 or self.power_iters < 0:
            raise ValueError(f"rank and power_iters must be ≥ 0, got {self.rank} and {self.power_iters}")

    def signature(self) -> str:
        return (
            f"interference|ties_density:{self.density:g}|rank:{self.rank}|power_iters:{self.power_iters}"
            f"|seed:{self.seed}|v:{INTERFERENCE_VERSION}"
        )


class CheckpointTensorSource:
    """A TensorSource (engine.merge.spec) over one tensor of a base and experts on disk, in its stored dtype: whole
    up to `stream_above` entries, else in row blocks of about `chunk_elements` entries (as the merge
    executor reads). `refuse_non_finite` names the file of an input holding NaN/Inf."""

    def __init__(
        self,
        base: Checkpoint,
        experts: Sequence[Checkpoint],
        name: str,
        reader: MappedReader,
        chunk_elements: int = CHUNK_ELEMENTS,
        stream_above: int = STREAM_ABOVE,
    ):
        self.name, self.reader = name, reader
        self.inputs = [base, *experts]
        self._entries = [c.entries()[name] for c in self.inputs]
        self._last: list[tuple[int, int] | None] = [None] * len(self.inputs)  # rows of the last block read
        self.shape = tuple(base.tensor_shape(name))
        self.n_models = len(experts)
        rows = self.shape[0] if self.shape else 1
        step = (
            rows
            if math.prod(self.shape) <= stream_above
            else max(1, chunk_elements // (math.prod(self.shape[1:]) or 1))
        )
        self.row_chunks = [(s, min(s + step, rows)) for s in range(0, rows, step)]

    def _read(self, index: int, start: int, stop: int) -> torch.Tensor:
        shard, entry = self._entries[index]
        # Blocks of a streamed tensor are used one after the other: the previous one's pages go.
        if len(self.row_chunks) > 1 and self._last[index] not in (None, (start, stop)):
            self.reader.release(shard, entry, *self._last[index])
        self._last[index] = (start, stop)
        return self.reader.read(shard, entry, start, stop if self.shape else 1)

    def release(self) -> None:
        """Drop the tensor's mapped pages from resident memory, every input's."""
        for shard, entry in self._entries:
            self.reader.release(shard, entry)

    def refuse_non_finite(self) -> None:
        """CheckpointError naming the first file whose copy of the tensor holds NaN/Inf (none: returns)."""
        for index in range(len(self.inputs)):
            for start, stop in self.row_chunks:
                check_finite(self._read(index, start, stop), self.name, self._entries[index][0])

    def base(self, start: int, stop: int) -> torch.Tensor:
        return self._read(0, start, stop)

    def model(self, index: int, start: int, stop: int) -> torch.Tensor:
        return self._read(index + 1, start, stop)


def _blocks(checkpoint: Checkpoint) -> int:
    config = checkpoint.config.get("text_config") or checkpoint.config
    return int(config.get("num_hidden_layers") or 0)


def analyse_checkpoints(
    base: Checkpoint,
    experts: Sequence[Checkpoint],
    settings: InterferenceSettings = InterferenceSettings(),
    progress: Progress | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    stream_above: int = STREAM_ABOVE,
    threads: int | None = None,
) -> InterferenceProfile:
    """The profile computed from the files (no cache): every floating tensor of the base, read whole up to
    `stream_above` entries and in blocks of about `chunk_elements` above, `threads` tensors at a time
    (default: torch's thread count). Each tensor's sums come from one thread, so the result does not
    depend on how many run."""
    if not experts:
        raise CheckpointError(f"{base.path}: interference needs at least one expert besides the base")
    check_compatible([base, *experts])
    names = [n for n in base.tensor_names if SAFETENSORS_DTYPES[base.tensor_dtype(n)].is_floating_point]
    local, readers, lock = threading.local(), [], threading.Lock()

    def one_tensor(name: str) -> TensorStats:
        if not hasattr(local, "reader"):  # a reader per thread: its mappings are its own
            local.reader = MappedReader()
            with lock:
                readers.append(local.reader)
        source = CheckpointTensorSource(base, experts, name, local.reader, chunk_elements, stream_above)
        try:
            return tensor_stats(source, name, settings.density, rank=0)
        except NonFiniteTensorError as error:
            source.refuse_non_finite()
            # Every entry finite: a square overflowed float32 (entries beyond 1.8e19).
            raise CheckpointError(f"{base.path}: {error}; no input holds NaN/Inf, so a sum overflowed") from error
        finally:
            source.release()

    stats: list[TensorStats] = []
    matrices = [i for i, n in enumerate(names) if len(base.tensor_shape(n)) == 2] if settings.rank else []
    steps = len(names) + len(matrices)
    pool = ThreadPoolExecutor(max(1, threads or torch.get_num_threads()))
    reader = MappedReader()
    readers.append(reader)
    try:
        for tensor in pool.map(one_tensor, names):
            if progress:
                progress(len(stats), steps, f"task vectors of {tensor.name}")
            stats.append(tensor)
        pool.shutdown()
        # The subspaces one tensor at a time: their matrix products use torch's threads themselves.
        for done, index in enumerate(matrices, start=len(names)):
            if progress:
                progress(done, steps, f"singular subspaces of {names[index]}")
            source = CheckpointTensorSource(base, experts, names[index], reader, chunk_elements, stream_above)
            subspace, k = subspace_stats(source, settings.rank, settings.power_iters, settings.seed)
            source.release()
            stats[index] = replace(stats[index], subspace=subspace, rank=k)
    finally:
        pool.shutdown(cancel_futures=True)
        for open_reader in readers:
            open_reader.close()
    if progress:
        progress(steps, steps, "done")
    return build_profile(stats, [e.name for e in experts], _blocks(base), settings.signature())


_ARRAYS = (
    "positions",
    "norms",
    "relative_norms",
    "cosine",
    "sign_conflict",
    "sign_conflict_mass",
    "ties_dropped",
    "ties_dropped_mass",
    "subspace_overlap",
    "score",
)


def interference_key(base: Checkpoint, experts: Sequence[Checkpoint], settings: InterferenceSettings) -> cache.Key:
    return cache.make_key(
        "interference", base=base.fingerprint, experts=[e.fingerprint for e in experts], settings=asdict(settings)
    )


def interference_profile(
    base: Checkpoint,
    experts: Sequence[Checkpoint],
    settings: InterferenceSettings = InterferenceSettings(),
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
    store: cache.Store | None = None,
) -> InterferenceProfile:
    """analyse_checkpoints through the cache, keyed by the checkpoints' fingerprints and the settings;
    `names` label the experts (default: their folder names)."""
    store = store or cache_store()
    names = tuple(names or [e.name for e in experts])

    def compute() -> cache.Entry:
        profile = analyse_checkpoints(base, experts, settings, progress)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(profile, k), dtype=np.float64)) for k in _ARRAYS}
        return cache.Entry(tensors, {"groups": list(profile.groups), "signature": profile.signature})

    entry = store.get_or_compute(
        interference_key(base, experts, settings), compute, f"interference {base.name} + {len(experts)} expert(s)"
    )
    arrays = {k: entry.tensors[k].numpy() for k in _ARRAYS}
    arrays["positions"] = arrays["positions"].astype(int)
    return InterferenceProfile(
        groups=tuple(entry.meta["groups"]),
        experts=names,
        neuron_overlap=None,
        signature=entry.meta["signature"],
        **arrays,
    )
