"""Capture jobs through a backend: span statistics (engine.activations) of many systems, one job
per (system, data set), written to the cache under the keys the analyses read them by.

After a sweep, `table_capture_jobs` lists every model of its table (base, joint, experts, best
merges) on the group's devtest sets, so layer and neuron analyses of those models start from
the cache; on Ray each capture is one task, like a sweep point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

import cache
from engine.activations import CaptureSettings, capture_cached, capture_key
from engine.checkpoints import load_model, load_tokenizer, open_checkpoint
from engine.merge import merge_into_model
from engine.parallel import ParallelSet
from engine.recipe import Recipe
from engine.settings import cache_store
from engine.sweep.backend import Backend

Progress = Callable[[int, int, str], None]  # (done, total, message)


@dataclass(frozen=True)
class CaptureJob:
    """One system on one parallel set: the merge recipe or the checkpoint folder, and the key parts."""

    name: str
    identity: str  # recipe content hash or checkpoint fingerprint
    pairs: ParallelSet
    device: str  # 'cpu' or 'cuda': where the job runs, part of the cache key
    settings: CaptureSettings = field(default_factory=CaptureSettings)
    recipe: Recipe | None = None
    checkpoint: str | None = None
    seed: int = 0

    @property
    def tokenizer_folder(self) -> str:
        if self.recipe is None:
            return self.checkpoint
        source = self.recipe.tokenizer_source
        return source if source not in (None, "base") else self.recipe.base_model or self.recipe.referenced_models()[0]

    def key(self, tokenizer) -> cache.Key:
        # A torch.device, not a name: the key must be computable where that device is absent.
        return capture_key(self.identity, tokenizer, self.pairs, self.settings, torch.device(self.device))


def capture_job(job: CaptureJob) -> str:
    """Merge or load the model, capture, cache; returns the cache key (the statistics stay in the cache)."""
    if job.recipe is not None:
        model, tokenizer = merge_into_model(job.recipe, device=job.device, seed=job.seed)
    else:
        model, tokenizer = load_model(job.checkpoint, device=job.device)
    capture_cached(model, tokenizer, job.pairs, job.identity, job.settings, device=torch.device(job.device))
    return str(job.key(tokenizer))


def capture_many(
    jobs: Sequence[CaptureJob],
    backend: Backend,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[str | BaseException | None]:
    """Run the capture jobs not already cached on `backend`. Per job: its cache key, the error it
    failed with, or None when stopped before it ran."""
    tokenizers = {}
    outcomes: list = []
    store = cache_store()
    for job in jobs:
        folder = job.tokenizer_folder
        if folder not in tokenizers:
            tokenizers[folder] = load_tokenizer(open_checkpoint(folder))
        key = job.key(tokenizers[folder])
        outcomes.append(str(key) if store.get(key) is not None else None)
    todo = [i for i, o in enumerate(outcomes) if o is None]
    count = {"done": len(jobs) - len(todo)}

    def done(k: int, value, error: BaseException | None) -> None:
        i = todo[k]
        outcomes[i] = value if error is None else error
        count["done"] += 1
        if progress:
            progress(count["done"], len(jobs), f"capture {jobs[i].name} on {jobs[i].pairs.direction}")

    backend.map(capture_job, [jobs[i] for i in todo], done, should_stop)
    return outcomes


def table_capture_jobs(result, device: str, settings: CaptureSettings = CaptureSettings()) -> list[CaptureJob]:
    """Every model of a finished sweep's tables (base, joint, experts, best merges) on each devtest
    set of its group; `result` is an engine.sweep.SweepResult."""
    config, prints = result.config, result.fingerprints
    jobs, seen = [], set()
    for group, experts in config.groups.items():
        systems = [("base", prints[str(config.base_model)], None, config.base_model)]
        systems += [("joint", prints[str(config.joint)], None, config.joint)] if config.joint else []
        systems += [(f"expert {d}", prints[str(p)], None, p) for d, p in experts.items()]
        systems += [
            (best.point.label, best.identity, best.recipe, None)
            for (g, _), (best, _) in result.best.items()
            if g == group
        ]
        for direction in experts:
            pairs = config.devtest[direction]
            for name, identity, recipe, path in systems:
                if (identity, pairs.content_hash()) in seen:
                    continue
                seen.add((identity, pairs.content_hash()))
                jobs.append(
                    CaptureJob(
                        name,
                        identity,
                        pairs,
                        device,
                        settings,
                        recipe=recipe,
                        checkpoint=str(path) if path else None,
                        seed=config.seed,
                    )
                )
    return jobs
