"""Run a recipe: plan, estimate memory, then stream tensor by tensor into a live model or a
Hugging Face checkpoint folder.

Inputs are read from safetensors shards a block of rows at a time with pread (nothing is
mapped), so resident memory holds one tensor's working set, not the inputs. Large 2-D tensors are merged in row chunks by methods that can stream; the rest
get whole tensors. Output shards are written with their header first, then each tensor as
it is merged, so nothing waits in memory for a shard to fill.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

from engine.checkpoints import Checkpoint, check_compatible, check_finite, config_size, open_checkpoint
from engine.device import resolve_device
from engine.errors import (
    CheckpointError,
    IncompatibleModelsError,
    InsufficientMemoryError,
    MergeScopeError,
    RecipeError,
)
from engine.merge.params import layer_position, resolve_all
from engine.merge.slices import PER_LAYER_CONFIG_KEYS, layer_config, plan_slices, stacked_config
from engine.merge.spec import BaseUse, MethodSpec
from engine.recipe import Recipe, content_hash

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 22  # rows per streamed block ≈ 4M entries (16 MB in float32) per input
ONE_PASS_CHUNK_ELEMENTS = 1 << 20  # one-pass methods: 4 MB float32 blocks stay in the L3 cache
STREAM_ABOVE = 1 << 23  # smaller tensors are merged whole: one read per input serves every pass
DEFAULT_SHARD_BYTES = 2 * 1024**3
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)
Progress = Callable[[str, int], None]  # (tensor name, number of entries) after each merged tensor


@dataclass(frozen=True)
class TensorInput:
    """One input of an output tensor: the checkpoint and the tensor's name in it (another
    layer's name when slices stack layers)."""

    checkpoint: Checkpoint
    name: str


@dataclass
class TensorJob:
    """One output tensor: its name, shape, dtypes, layer position, inputs and resolved parameters."""

    name: str
    shape: tuple[int, ...]
    stored_dtype: torch.dtype
    t: float
    global_params: dict
    model_params: dict
    floating: bool
    base_input: TensorInput | None
    model_inputs: tuple[TensorInput, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class MergePlan:
    """Everything decided before a merge starts; building it reads headers only."""

    recipe: Recipe
    spec: MethodSpec
    base: Checkpoint | None
    models: list[Checkpoint]
    template: Checkpoint  # where config, tokenizer and (without slices) tensor names come from
    jobs: list[TensorJob]
    out_dtype: torch.dtype | None  # None: each tensor keeps its stored dtype
    config: dict  # the output's config.json: the template's, with the stacked layer count for slices
    seed: int = 0
    key: str = ""
    _entries: dict = field(default_factory=dict, repr=False)

    @property
    def inputs(self) -> list[Checkpoint]:
        return ([self.base] if self.base else []) + self.models

    def output_dtype(self, job: TensorJob) -> torch.dtype:
        return self.out_dtype if (self.out_dtype and job.floating) else job.stored_dtype


def plan_merge(recipe: Recipe, seed: int = 0) -> MergePlan:
    """Open and check every checkpoint, and resolve every parameter for every tensor.

    Raises RecipeError (missing parameter for some tensor, bad values), CheckpointError,
    PathNotAllowedError or IncompatibleModelsError before any work starts.
    """
    opened: dict[str, Checkpoint] = {}
    for ref in recipe.referenced_models():
        opened[ref] = open_checkpoint(ref)
    if recipe.slices:
        plan = _plan_slices(recipe, opened, seed)
    else:
        plan = _plan_models(recipe, opened, seed)
    plan._entries = {id(c): c.entries() for c in opened.values()}
    return plan


def _plan_models(recipe: Recipe, opened: dict[str, Checkpoint], seed: int) -> MergePlan:
    """Whole models: every tensor of the template, merged from the same tensor of each input."""
    base_ref, inputs = recipe.merge_inputs()
    base = opened[base_ref] if base_ref else None
    models = [opened[m.model] for m in inputs]
    check_compatible(([base] if base else []) + models)
    template = opened[recipe.base_model] if recipe.base_model else models[0]
    num_layers = config_size(template.config, "num_hidden_layers") or 1
    model_scopes = [[m.parameters, recipe.parameters] for m in inputs]
    jobs = [
        _job(
            recipe,
            name,
            layer_position(name, num_layers),
            TensorInput(template, name),
            TensorInput(base, name) if base else None,
            [TensorInput(m, name) for m in models],
            [recipe.parameters],
            model_scopes,
            [m.model for m in inputs],
        )
        for name in template.tensor_names
    ]
    return MergePlan(recipe, recipe.method, base, models, template, jobs, _out_dtype(recipe), template.config, seed)


def _plan_slices(recipe: Recipe, opened: dict[str, Checkpoint], seed: int) -> MergePlan:
    """Layer ranges stacked slice by slice (see engine.merge.slices)."""
    checkpoints = list(opened.values())
    problems = [
        f"{c.path}: {what} {mine} vs {theirs} in {checkpoints[0].path}"
        for c in checkpoints[1:]
        for what, mine, theirs in (
            ("architecture", c.summary.architecture, checkpoints[0].summary.architecture),
            ("vocabulary size", c.summary.vocab_size, checkpoints[0].summary.vocab_size),
        )
        if mine != theirs
    ]
    if problems:
        raise IncompatibleModelsError("checkpoints are not compatible:\n- " + "\n- ".join(problems))
    planned, behind = plan_slices(recipe, opened)
    jobs = []
    for item in planned:
        out_slice = item.out_slice
        name_in = dict(zip(map(id, out_slice.sources), item.source_names))
        base_src, inputs = recipe.slice_inputs(out_slice)
        base_input = TensorInput(opened[base_src.model], name_in[id(base_src)]) if base_src else None
        model_inputs = [TensorInput(opened[s.model], name_in[id(s)]) for s in inputs]
        jobs.append(
            _job(
                recipe,
                item.name,
                item.t,
                base_input or model_inputs[0],
                base_input,
                model_inputs,
                [out_slice.parameters, recipe.parameters],
                [[s.parameters, out_slice.parameters, recipe.parameters] for s in inputs],
                [s.model for s in inputs],
            )
        )
    template = opened[recipe.base_model] if recipe.base_model else opened[recipe.slices[0].sources[0].model]
    base = opened.get(recipe.base_model) if recipe.base_model else None
    models = [c for ref, c in opened.items() if ref != recipe.base_model]
    config = stacked_config(template.config, behind, {ref: c.config for ref, c in opened.items()})
    return MergePlan(recipe, recipe.method, base, models, template, jobs, _out_dtype(recipe), config, seed)


def _out_dtype(recipe: Recipe) -> torch.dtype | None:
    """out_dtype, else dtype, else None (each tensor keeps its stored dtype)."""
    dtype = DTYPE_NAMES[recipe.dtype] if recipe.dtype else None
    return DTYPE_NAMES[recipe.out_dtype] if recipe.out_dtype else dtype


def _job(
    recipe: Recipe,
    name: str,
    t: float,
    like: TensorInput,
    base_input: TensorInput | None,
    model_inputs: list[TensorInput],
    global_scopes: list[dict],
    model_scopes: list[list[dict]],
    model_names: list[str],
) -> TensorJob:
    """One output tensor, shaped and typed like `like`, with its parameters resolved."""
    spec, where = recipe.method, recipe.source or "recipe"
    code = like.checkpoint.tensor_dtype(like.name)
    stored = SAFETENSORS_DTYPES.get(code)
    if stored is None:
        raise CheckpointError(
            f"{like.checkpoint.shard_of(like.name)}: tensor {like.name!r} has unsupported dtype {code}"
        )
    shape = tuple(like.checkpoint.tensor_shape(like.name))
    for other in ([base_input] if base_input else []) + model_inputs:
        if tuple(other.checkpoint.tensor_shape(other.name)) != shape:
            raise IncompatibleModelsError(
                f"{other.checkpoint.path}: tensor {other.name!r} has shape "
                f"{list(other.checkpoint.tensor_shape(other.name))}, {like.checkpoint.path}'s {like.name!r} {list(shape)}"
            )
    try:
        shared, per_model = resolve_all(
            spec, global_scopes, model_scopes, model_names, name, t, [m.name for m in model_inputs]
        )
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    if spec.check and (problem := spec.check(shared, per_model)):
        raise RecipeError(f"{where}: {spec.name} on tensor {name!r}: {problem}")
    return TensorJob(
        name, shape, stored, t, shared, per_model, stored.is_floating_point, base_input, tuple(model_inputs)
    )


# ---------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes a merge needs on the host and on the compute device, and what is available."""

    host_bytes: int
    device_bytes: int
    host_available: int
    device_available: int | None
    device: str

    def fits(self) -> bool:
        if self.device_available is None:
            return self.host_bytes + self.device_bytes <= self.host_available
        return self.host_bytes <= self.host_available and self.device_bytes <= self.device_available


def available_memory(device: torch.device) -> tuple[int, int | None]:
    """(host bytes available, device bytes free or None for CPU)."""
    host = int(psutil.virtual_memory().available)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return host, int(free)
    return host, None


def _work_bytes(plan: MergePlan, job: TensorJob) -> int:
    n_in = len(plan.inputs)
    step = _stream_rows(plan.spec, job.shape)
    if step is not None:
        elems = step * math.prod(job.shape[1:])
    else:
        elems = job.numel
    # Inputs in float32, the stacked weighted task vectors, masks and the result: about 3 copies per input.
    return elems * 4 * (3 * n_in + 4)


def estimate_memory(plan: MergePlan, device: torch.device, into_model: bool = False) -> MemoryEstimate:
    """Peak working set of the largest tensor, plus the live model when merging into memory."""
    work = max((_work_bytes(plan, j) for j in plan.jobs), default=0)
    largest_out = max((j.numel * plan.output_dtype(j).itemsize for j in plan.jobs), default=0)
    model_bytes = sum(j.numel * plan.output_dtype(j).itemsize for j in plan.jobs)
    resident = model_bytes if into_model else largest_out
    host_avail, dev_avail = available_memory(device)
    if device.type == "cuda":
        device_bytes = work + (model_bytes if into_model else 0)
        host_bytes = largest_out
    else:
        device_bytes, host_bytes = work, resident
    return MemoryEstimate(host_bytes, device_bytes, host_avail, dev_avail, str(device))


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024**3:.2f} GiB"


def check_memory(plan: MergePlan, device: torch.device, into_model: bool = False) -> MemoryEstimate:
    est = estimate_memory(plan, device, into_model)
    if not est.fits():
        where = plan.recipe.source or "recipe"
        if est.device_available is None:
            detail = (
                f"needs about {_gib(est.host_bytes + est.device_bytes)} of memory, {_gib(est.host_available)} available"
            )
        else:
            detail = (
                f"needs about {_gib(est.device_bytes)} on {est.device} ({_gib(est.device_available)} free) and "
                f"{_gib(est.host_bytes)} on the host ({_gib(est.host_available)} available)"
            )
        raise InsufficientMemoryError(f"{where}: merge refused before starting: it {detail}")
    return est


# ---------------------------------------------------------------------------- reading


def _chunk_rows(shape: tuple[int, ...], elements: int | None = None) -> int:
    row = math.prod(shape[1:]) or 1
    return max(1, (elements or CHUNK_ELEMENTS) // row)


def _stream_rows(spec: MethodSpec, shape: tuple[int, ...]) -> int | None:
    """Rows per block when `spec` streams this tensor; None when it gets the tensor whole."""
    if spec.stream is None or len(shape) < 2:
        return None
    if spec.one_pass:  # every block is read once, so small blocks cost no re-reading
        return _chunk_rows(shape, ONE_PASS_CHUNK_ELEMENTS)
    return _chunk_rows(shape) if math.prod(shape) > STREAM_ABOVE else None


def _rounding(stored: torch.dtype, to: torch.dtype | None) -> bool:
    """Whether converting `stored` values to `to` can change them (bf16 → f32 cannot; f32 → bf16 can)."""
    if to is None or to == stored:
        return False
    return not (to in (torch.float32, torch.float64) and to.itemsize > stored.itemsize)


def _block_span(entry, start: int, stop: int) -> tuple[torch.dtype, int, int, tuple[int, ...]]:
    """(dtype, first byte in the shard, bytes, shape) of rows [start, stop) of a tensor's entry."""
    dtype = SAFETENSORS_DTYPES[entry.dtype]
    shape = tuple(entry.shape)
    row_bytes = (math.prod(shape[1:]) if shape else 1) * dtype.itemsize
    first = entry.start + start * row_bytes
    count = (stop - start) * row_bytes if shape else entry.end - entry.start
    return dtype, first, count, (stop - start,) + shape[1:] if shape else ()


class ShardReader:
    """Row blocks of tensors read from shard files with pread: nothing is mapped, so resident
    memory holds only the blocks being merged, whatever the block size."""

    def __init__(self):
        self._files: dict[Path, int] = {}
        self._scratch = torch.empty(0, dtype=torch.uint8)  # raw bytes of a block that is converted

    def _fd(self, shard: Path) -> int:
        if shard not in self._files:
            self._files[shard] = os.open(shard, os.O_RDONLY)
        return self._files[shard]

    def read(self, shard: Path, entry, start: int, stop: int, as_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor as a fresh tensor (converted to `as_dtype` on the way)."""
        dtype, first, count, rows = _block_span(entry, start, stop)
        convert = as_dtype not in (None, dtype)
        if convert:  # raw bytes into a reused buffer, converted into the fresh tensor
            if self._scratch.numel() < count:
                self._scratch = torch.empty(count, dtype=torch.uint8)
            raw = self._scratch[:count]
        else:
            raw = torch.empty(count, dtype=torch.uint8)
        buffer, done = raw.numpy(), 0
        while done < count:  # one call moves at most about 2 GB
            got = os.preadv(self._fd(shard), [buffer[done:]], first + done)
            if got == 0:
                raise CheckpointError(
                    f"{shard}: tensor data ends early (read {done} of {count} bytes at offset {first})"
                )
            done += got
        view = raw.view(dtype).reshape(rows)
        return view.to(as_dtype) if convert else view

    def close(self):
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


class MappedReader:
    """Row blocks of tensors as views of the shard files, each file mapped once: nothing is
    copied out of the page cache. `release` drops a tensor's pages from the process's resident memory
    once it is done with (they stay in the page cache), so resident memory holds about the tensors in
    work, as a reader's blocks would. For readers that only read (the interference pass)."""

    def __init__(self):
        self._maps: dict[Path, mmap.mmap] = {}

    def _map(self, shard: Path) -> mmap.mmap:
        if shard not in self._maps:
            fd = os.open(shard, os.O_RDONLY)
            try:
                # Copy-on-write: a block is a writable tensor like a read one, and a write (none is made)
                # would change this process's copy only, never the file.
                self._maps[shard] = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            finally:
                os.close(fd)
        return self._maps[shard]

    def read(self, shard: Path, entry, start: int, stop: int, as_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor, a view of the file (converted to `as_dtype` into a fresh tensor)."""
        dtype, first, count, rows = _block_span(entry, start, stop)
        mapped = self._map(shard)
        if first + count > len(mapped):  # a view past the end would fault on access
            raise CheckpointError(
                f"{shard}: tensor data ends early ({len(mapped)} bytes, the tensor needs {first + count})"
            )
        view = torch.from_numpy(np.frombuffer(mapped, np.uint8, count, first)).view(dtype).reshape(rows)
        return view.to(as_dtype) if as_dtype not in (None, dtype) else view

    def release(self, shard: Path, entry, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of rows [start, stop) of a tensor (default: all of it) from resident memory;
        they stay in the page cache and a later read maps them again."""
        _, first, count, _ = _block_span(entry, start, (entry.shape[0] if entry.shape else 1) if stop is None else stop)
        aligned = first - first % mmap.PAGESIZE
        if shard in self._maps and count:
            self._maps[shard].madvise(mmap.MADV_DONTNEED, aligned, first + count - aligned)

    def close(self):
        self._maps.clear()  # each mapping goes when the last view of it does


class _CheckpointSource:
    """TensorSource over checkpoints for one tensor (see engine.merge.spec.TensorSource)."""

    def __init__(self, plan: MergePlan, job: TensorJob, reader: ShardReader, device: torch.device):
        self.plan, self.job, self.reader, self.device = plan, job, reader, device
        self.shape = job.shape
        self.n_models = len(job.model_inputs)
        rows = job.shape[0] if job.shape else 1
        step = _stream_rows(plan.spec, job.shape) or rows
        self.row_chunks = [(s, min(s + step, rows)) for s in range(0, rows, step)] or [(0, 0)]
        self._cache: dict = {}
        self._checked: set = set()
        # Methods whose output shows every NaN/Inf input get their output checked instead (see _checked_output).
        self._check_inputs = not plan.spec.nonfinite_propagates
        recipe_dtype = DTYPE_NAMES.get(plan.recipe.dtype) if plan.recipe.dtype else None
        self._round_to = recipe_dtype
        self._work = torch.float64 if torch.float64 in (recipe_dtype, job.stored_dtype) else torch.float32
        self._single = len(self.row_chunks) == 1

    def _read(self, tensor: TensorInput, start: int, stop: int) -> torch.Tensor:
        key = (id(tensor.checkpoint), tensor.name, start)
        if key in self._cache:
            return self._cache[key]
        shard, entry = self.plan._entries[id(tensor.checkpoint)][tensor.name]
        stored = SAFETENSORS_DTYPES[entry.dtype]
        rounds = _rounding(stored, self._round_to)
        on_host = self.device.type == "cpu" and not rounds
        # On the CPU the conversion to the work dtype happens in the copy out of the mapped file.
        x = self.reader.read(shard, entry, start, stop if self.shape else 1, self._work if on_host else None)
        if self._check_inputs and key not in self._checked:  # multi-pass methods re-read a block; once is enough
            # A sum is NaN/Inf whenever an entry is (or on overflow, which the full check then clears).
            if not torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)):
                check_finite(x, tensor.name, shard)
            self._checked.add(key)
        x = x.to(self.device, non_blocking=True)
        if rounds:
            x = x.to(self._round_to)  # the recipe's dtype rounds inputs, as mergekit does
        x = x.to(self._work)
        if self._single:  # small tensors are read once and reused by every pass
            self._cache[key] = x
        return x

    def base(self, start: int, stop: int) -> torch.Tensor:
        return self._read(self.job.base_input, start, stop)

    def model(self, index: int, start: int, stop: int) -> torch.Tensor:
        return self._read(self.job.model_inputs[index], start, stop)

    def whole(self, tensor: TensorInput) -> torch.Tensor:
        rows = self.job.shape[0] if self.job.shape else 1
        return self._read(tensor, 0, rows)

    def refuse_nonfinite(self) -> None:
        """CheckpointError naming the first input whose tensor holds NaN/Inf (counted block by block)."""
        inputs = ([self.job.base_input] if self.job.base_input else []) + list(self.job.model_inputs)
        for tensor in inputs:
            shard, entry = self.plan._entries[id(tensor.checkpoint)][tensor.name]
            bad = 0
            for s, e in self.row_chunks:
                x = self.reader.read(shard, entry, s, e if self.shape else 1)
                bad += int((~torch.isfinite(x)).sum())
            if bad:
                raise CheckpointError(
                    f"{shard}: tensor {tensor.name!r} holds {bad} NaN/Inf value(s); refusing to use it"
                )


def _tensor_seed(seed: int, name: str) -> int:
    # Stable across runs and processes (unlike hash()), so random dropping is reproducible.
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:7], "little")


def iter_merged(
    plan: MergePlan, device: torch.device | str | None = None, progress: Progress | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, merged tensor in its output dtype, on `device`) in the plan's order."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    reader = ShardReader()
    try:
        for job in plan.jobs:
            yield job.name, _merge_one(plan, job, reader, device)
            if progress:
                progress(job.name, job.numel)
    finally:
        reader.close()


def _merge_one(plan: MergePlan, job: TensorJob, reader: ShardReader, device: torch.device) -> torch.Tensor:
    """One whole merged tensor in its output dtype."""
    chunks = list(_merge_chunks(plan, job, reader, device))
    out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return out.reshape(job.shape)


def _checked_output(source: _CheckpointSource, chunk: torch.Tensor) -> torch.Tensor:
    """The chunk, after refusing the merge when unchecked inputs put NaN/Inf into it.

    A sum is NaN/Inf whenever an entry is; it can also overflow, which the full check clears.
    """
    if not source._check_inputs and not torch.isfinite(chunk.sum()):
        source.refuse_nonfinite()
    return chunk


def _merge_chunks(plan: MergePlan, job: TensorJob, reader: ShardReader, device: torch.device) -> Iterator[torch.Tensor]:
    """The merged tensor as row blocks in order, in its output dtype: writers never hold it whole."""
    spec = plan.spec
    out_dtype = plan.output_dtype(job)
    rows = job.shape[0] if job.shape else 1
    first = job.base_input or job.model_inputs[0]
    if not job.floating:  # integer buffers are copied from the first input, never averaged
        shard, entry = plan._entries[id(first.checkpoint)][first.name]
        yield reader.read(shard, entry, 0, rows).reshape(job.shape).to(device)
        return
    source = _CheckpointSource(plan, job, reader, device)
    params = {**job.global_params, **job.model_params}
    seed = _tensor_seed(plan.seed, job.name)
    if spec.base_use == BaseUse.REQUIRED and not job.model_inputs:
        yield _checked_output(source, source.whole(job.base_input)).reshape(job.shape).to(out_dtype)
    elif spec.stream is not None:
        for (s, e), chunk in zip(source.row_chunks, spec.stream(source, seed=seed, **params)):
            yield _checked_output(source, chunk).reshape(((e - s),) + job.shape[1:] if job.shape else ()).to(out_dtype)
    else:
        base = source.whole(job.base_input) if job.base_input else None
        models = [source.whole(m) for m in job.model_inputs]
        if spec.by_tensor_name:
            params["tensor_name"] = job.name
        if spec.by_layer_position:
            params["layer_position"] = job.t
        try:
            merged = spec.merge(base, models, seed=seed, **params)
        except RecipeError as err:  # a method that cannot merge these values says why; add where
            raise RecipeError(f"{plan.recipe.source or 'recipe'}: tensor {job.name!r}: {err}") from None
        yield merged.reshape(job.shape).to(out_dtype)


# ---------------------------------------------------------------------------- outputs


def merge_into_model(
    recipe: Recipe,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    progress: Progress | None = None,
):
    """Merge straight into a live `transformers` model (no disk): returns (model in eval mode, tokenizer).

    dtype defaults to the one engine.checkpoints.load_model uses (float32 on CPU, the merge's
    output dtype on CUDA).
    """
    import transformers
    from transformers.initialization import no_init_weights

    from engine.checkpoints import load_tokenizer
    from engine.checkpoints.loading import MODEL_CONSTRUCTION_LOCK

    device = device if isinstance(device, torch.device) else resolve_device(device)
    plan = plan_merge(recipe, seed)
    check_memory(plan, device, into_model=True)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else (plan.out_dtype or plan.jobs[0].stored_dtype)
    config = transformers.AutoConfig.from_pretrained(plan.template.path, local_files_only=True, trust_remote_code=False)
    if plan.recipe.slices:  # stacked layers: the layer count (and per-layer entries) of the output
        holder = config.get_text_config()
        holder.num_hidden_layers = config_size(plan.config, "num_hidden_layers")
        for key in PER_LAYER_CONFIG_KEYS:
            value = layer_config(plan.config).get(key)
            if value is not None and hasattr(holder, key):
                setattr(holder, key, value)
    with MODEL_CONSTRUCTION_LOCK:  # transformers' init and tie patches are process-wide
        with no_init_weights(), torch.device(device):
            # Weights are overwritten below, so skip random init; buffers (rotary) still get built.
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
        # no_init_weights leaves tied embeddings untied; re-tie so lm_head shares the merged embedding.
        model.tie_weights()
    targets = model.state_dict(keep_vars=True)
    model_key = _checkpoint_key_renamer(model)
    filled = set()
    with torch.no_grad():
        for name, tensor in iter_merged(plan, device, progress):
            key = name if name in targets else model_key(name)
            if key not in targets:
                raise CheckpointError(f"{plan.template.path}: tensor {name!r} has no place in {type(model).__name__}")
            targets[key].data.copy_(tensor)
            filled.add(key)
    missing = [n for n, p in model.named_parameters() if n not in filled]
    if missing:
        raise CheckpointError(
            f"{plan.template.path}: merged checkpoint lacks {len(missing)} parameter(s): {missing[:5]}"
        )
    model.eval()
    model.merge_recipe = recipe  # provenance for the dashboard
    return model, load_tokenizer(_tokenizer_checkpoint(plan))


def _checkpoint_key_renamer(model) -> Callable[[str], str]:
    """transformers' own one-to-one renamings from checkpoint keys to the model's (GPT-NeoX stores
    its head as embed_out.weight, the model holds it as lm_head.weight), as from_pretrained applies them."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, apply_renamings

    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return lambda key: apply_renamings(key, renamings)


def _tokenizer_checkpoint(plan: MergePlan) -> Checkpoint:
    source = plan.recipe.tokenizer_source
    if source and source != "base":
        return open_checkpoint(source)
    return plan.template


def _shards(plan: MergePlan, max_bytes: int) -> list[list[TensorJob]]:
    shards: list[list[TensorJob]] = [[]]
    size = 0
    for job in plan.jobs:
        nbytes = job.numel * plan.output_dtype(job).itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(job)
        size += nbytes
    return shards


def _header(plan: MergePlan, jobs: list[TensorJob]) -> bytes:
    header, offset = {}, 0
    for job in jobs:
        dtype = plan.output_dtype(job)
        nbytes = job.numel * dtype.itemsize
        header[job.name] = {
            "dtype": DTYPE_CODES[dtype],
            "shape": list(job.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def save_merge(
    recipe: Recipe,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Merge into a Hugging Face checkpoint folder: sharded safetensors, config, tokenizer and chat
    template from the base, the recipe (mergekit_config.yml) and a model card (README.md).

    Written into a temporary folder beside `out_dir` and renamed at the end: on any failure
    nothing is left at `out_dir` (and an existing folder is kept unless `overwrite`).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite:
        raise MergeScopeError(f"{out_dir}: already exists; choose another folder or pass overwrite")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    plan = plan_merge(recipe, seed)
    check_memory(plan, device)
    plan.key = content_hash(recipe, lambda ref: open_checkpoint(ref).fingerprint, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_checkpoint(plan, tmp, device, progress, max_shard_bytes)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("merged %s into %s", recipe.merge_method, out_dir)
    return out_dir


def _write_checkpoint(
    plan: MergePlan, folder: Path, device: torch.device, progress: Progress | None, max_shard_bytes: int
) -> None:
    shards = _shards(plan, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map, total = {}, 0
    reader = ShardReader()
    try:
        for shard_jobs, file_name in zip(shards, names):
            with open(folder / file_name, "wb") as f:
                f.write(_header(plan, shard_jobs))
                for job in shard_jobs:
                    for chunk in _merge_chunks(plan, job, reader, device):
                        data = chunk.detach().to("cpu").contiguous()
                        if data.numel():
                            f.write(data.reshape(-1).view(torch.uint8).numpy().data)
                        total += data.numel() * data.element_size()
                        del chunk, data
                    weight_map[job.name] = file_name
                    if progress:
                        progress(job.name, job.numel)
    finally:
        reader.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    config = dict(plan.config)
    if plan.out_dtype is not None:
        name = next(k for k, v in DTYPE_NAMES.items() if v == plan.out_dtype)
        config["dtype"] = name
        config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_source = _tokenizer_checkpoint(plan).path
    for file_name in TOKENIZER_FILES:
        if (tok_source / file_name).is_file():
            shutil.copy2(tok_source / file_name, folder / file_name)
    template = plan.recipe.chat_template
    if template and template != "auto":
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    recipe_yaml = plan.recipe.to_yaml()
    (folder / "mergekit_config.yml").write_text(recipe_yaml, encoding="utf-8")
    (folder / "README.md").write_text(_model_card(plan, recipe_yaml), encoding="utf-8")


def _model_card(plan: MergePlan, recipe_yaml: str) -> str:
    spec = plan.spec
    models = "\n".join(f"- `{c.path}`" for c in plan.models)
    base = f"`{plan.base.path}`" if plan.base else "none"
    seed = f"\nRandom seed: {plan.seed}." if spec.random else ""
    return (
        f"---\ntags:\n- merge\n- mergescope\n---\n# {_card_title(plan)}\n\n"
        f"A merge made with MergeScope using **{spec.display_name}** ({spec.paper}).\n\n"
        f"Base model: {base}\n\nMerged models:\n{models}\n\n"
        f"Recipe hash: `{plan.key}`.{seed}\n\n## Recipe (mergekit YAML)\n\n```yaml\n{recipe_yaml}```\n"
    )


def _card_title(plan: MergePlan) -> str:
    return f"{plan.spec.name} merge of {len(plan.models)} model(s)"
