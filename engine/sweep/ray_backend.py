"""The `ray` backend: each job is one Ray task, asking for one GPU when the cluster has GPUs and
one CPU otherwise. The only module that imports Ray (pip install -r requirements-ray.txt).

Tasks read checkpoints and write the cache through paths, so every node must see the repository,
the model roots and MERGESCOPE_CACHE_DIR at the same paths (a shared filesystem); the driver's
settings travel with each task. A task whose worker dies (killed, out of memory) is retried by
Ray up to `max_retries` times, then reported to the caller like any failed job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import ray
import torch
from ray.exceptions import RayError, RayTaskError

from engine.settings import REPO_ROOT, get_settings
from engine.sweep.backend import OnDone

log = logging.getLogger(__name__)
_ENV_PREFIX = "MERGESCOPE_"


def ray_init(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address`, or start a local Ray (`num_cpus` workers at most);
    workers import the engine from this checkout."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        # Loopback only: a cluster started for one run has no business listening on the network.
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=runtime_env)


def worker_environ() -> dict[str, str]:
    """The driver's MERGESCOPE_* settings with paths resolved, so a worker uses the same cache and
    model roots; the backend choice stays behind (a task runs its job in place)."""
    settings = get_settings()
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIX)}
    env.update(
        {
            "MERGESCOPE_CACHE_DIR": str(settings.cache_dir),
            "MERGESCOPE_MODEL_ROOTS": os.pathsep.join(map(str, settings.model_roots)),
            "MERGESCOPE_DATA_DIR": str(settings.data_dir),
        }
    )
    for key in ("MERGESCOPE_BACKEND", "MERGESCOPE_RAY_ADDRESS"):
        env.pop(key, None)
    return env


@ray.remote
def mergescope_job(fn: Callable, job, environ: dict[str, str]):
    """Run fn(job) in a worker under the driver's settings (workers are reused across runs)."""
    from engine.settings import get_settings

    for key in [k for k in os.environ if k.startswith(_ENV_PREFIX)]:
        del os.environ[key]
    os.environ.update(environ)
    get_settings.cache_clear()
    return fn(job)


def _cause(err: RayError) -> BaseException:
    # A task's own exception comes wrapped; report the original (e.g. "RecipeError: ...").
    return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err


class RayBackend:
    """Jobs as Ray tasks on the cluster at `address`, or on a local Ray started here (and shut
    down by close()) when no address is given and none is running in this process."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 3, num_cpus: int | None = None):
        self.max_retries = max_retries
        self.submitted = 0
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            log.info("starting Ray%s", f" at {address}" if address else " locally")
            ray_init(address, num_cpus)
        self.gpus = ray.cluster_resources().get("GPU", 0)

    def device(self, requested: str | None) -> str:
        if requested not in (None, "auto"):
            return "cuda" if requested.startswith("cuda") else "cpu"
        return "cuda" if self.gpus else "cpu"

    def map(self, fn: Callable, jobs: Sequence, on_done: OnDone, should_stop: Callable[[], bool]) -> bool:
        task = mergescope_job.options(
            num_gpus=1 if self.gpus else 0,
            num_cpus=1,
            max_retries=self.max_retries,
            # Out of memory may pass once neighbours finish; any other exception is the job's own
            # (a bad recipe, bad data) and would fail again.
            retry_exceptions=[MemoryError, torch.OutOfMemoryError],
        )
        environ = worker_environ()
        pending = {task.remote(fn, job, environ): i for i, job in enumerate(jobs)}
        self.submitted += len(pending)
        while pending:
            if should_stop():
                for ref in pending:
                    ray.cancel(ref)
                return True
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except RayError as err:
                    on_done(i, None, _cause(err))
                else:
                    on_done(i, value, None)
        return False

    def close(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
