"""Live models by system identity: loaded or merged on a miss, within a memory budget."""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from engine.checkpoints import load_model
from engine.device import model_memory_budget
from engine.pipeline.systems import System

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A live model and its tokenizer. `lock` serialises use: capture hooks mutate the module."""

    model: object
    tokenizer: object
    identity: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @functools.cached_property
    def weight_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (tied weights counted once)."""
        return self.model.get_memory_footprint(return_buffers=True)


class ModelCache:
    """Loaded and merged models by identity, within a budget of weight bytes, least recently
    used dropped first; thread-safe.

    Two sessions asking for the same model at once build it once: the second waits on a
    per-identity lock instead of merging again. The budget is in bytes, not models: a count
    that suits 7B checkpoints thrashes on the demo zoo (four sessions' merges, base, experts and
    joint model are 8 models of 6 MB; with room for 6, merges were rebuilt mid-page, doubling
    the server's CPU in a 4-session cold round) and overflows memory with large ones.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = model_memory_budget() if budget_bytes is None else budget_bytes
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._building: dict[str, threading.Lock] = {}
        self.builds = 0  # how many models were loaded or merged (for tests and benchmarks)

    def get(self, system: System) -> LoadedModel:
        """The live model of `system`, loading the checkpoint or running the merge on a miss."""
        with self._lock:
            if system.identity in self._models:
                self._models.move_to_end(system.identity)
                return self._models[system.identity]
            build_lock = self._building.setdefault(system.identity, threading.Lock())
        with build_lock:
            with self._lock:
                if system.identity in self._models:
                    return self._models[system.identity]
            loaded = self._build(system)
            with self._lock:
                self._models[system.identity] = loaded
                self.builds += 1
                # The model just built stays even alone over budget: its caller is about to use it.
                while len(self._models) > 1 and sum(m.weight_bytes for m in self._models.values()) > self.budget_bytes:
                    dropped, _ = self._models.popitem(last=False)
                    log.info("model cache full: dropped %s", dropped[:12])
                self._building.pop(system.identity, None)
        return loaded

    def __contains__(self, identity: str) -> bool:
        with self._lock:
            return identity in self._models

    def _build(self, system: System) -> LoadedModel:
        if system.patch is not None:  # a copy of the cached merge, patched: the merge is not run again
            from engine.patch.patching import apply_patch

            merged = self.get(system.patch.merge)
            with merged.lock:
                model = copy.deepcopy(merged.model)
            log.info("patching %s", system.identity[:12])
            apply_patch(model, system.patch.source.checkpoint, system.patch.layers)
            return LoadedModel(model, merged.tokenizer, system.identity)
        if system.is_merge:
            from engine.merge import merge_into_model  # imported on first merge: keeps app start-up light

            log.info("merging %s in memory", system.identity[:12])
            model, tokenizer = merge_into_model(system.recipe)
        else:
            log.info("loading %s", system.checkpoint.path)
            model, tokenizer = load_model(system.checkpoint)
        return LoadedModel(model, tokenizer, system.identity)


def limit_torch_threads(cpus: int | None = None) -> int:
    """Torch threads per job for a server that runs several jobs at once (sessions' merges,
    evaluations and captures, and the prefetch worker): a quarter of the cores, at least one.

    Torch's default (every core per job) oversubscribes the CPU as soon as two jobs overlap, and
    OpenMP threads then spin against each other: on 2 cores, one cold Merge → Scores → Layers took
    62 s (31 s of server CPU) with the default and 15 s (6 s) with one thread. An explicit
    OMP_NUM_THREADS is left alone. Returns the thread count in effect.
    """
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (cpus or os.cpu_count() or 1) // 4))
    return torch.get_num_threads()
