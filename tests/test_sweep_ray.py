"""The Ray backend on a local Ray with 2 CPUs (started here, shut down after), over the demo zoo:
the same table as the local backend, a worker killed mid-sweep loses nothing, a second run sends
no task, a job whose worker always dies is retried a bounded number of times then reported, and
capture jobs on Ray equal captures made in this process."""

from __future__ import annotations

import psutil
import pytest
import ray
import torch

from engine.activations import Capture, capture
from engine.checkpoints import load_model, open_checkpoint
from engine.merge import merge_into_model
from engine.recipe import content_hash
from engine.settings import ZOO_DIR, cache_store, get_settings
from engine.sweep import LocalBackend, from_dict, run_sweep, table_csv, table_markdown, zoo_grid
from engine.sweep.captures import CaptureJob, capture_many
from engine.sweep.progress import recent_sweeps
from engine.sweep.ray_backend import RayBackend, ray_init
from engine.sweep.run import build_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ZOO_DIR / "models"


def zoo_config(groups=("en-x", "x-en")):
    """Two directions per group, three points per group, two sentences: small enough for CI."""
    grid = zoo_grid(ZOO_DIR, dev_limit=2, max_new_tokens=8)
    grid["groups"] = {g: dict(list(e.items())[:2]) for g, e in grid["groups"].items() if g in groups}
    grid.pop("joint", None)
    grid["methods"] = {
        "task_arithmetic": {"weight": [0.3, 1.0]},
        "ties": {"density": [0.5], "weight": [1.0], "normalize": [True]},
    }
    grid["devtest_limit"] = 2
    return from_dict(grid, ZOO_DIR, "zoo test grid")


@pytest.fixture(autouse=True)
def zoo_root(isolated_settings, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(MODELS))
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def local_ray():
    ray_init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local backend's sweep in a cache of its own: what Ray must reproduce."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path_factory.mktemp("local-cache")))
        mp.setenv("MERGESCOPE_MODEL_ROOTS", str(MODELS))
        mp.setenv("MERGESCOPE_DEVICE", "cpu")
        get_settings.cache_clear()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        backend = LocalBackend()
        result = run_sweep(zoo_config(), backend=backend)
        torch.set_num_threads(threads)
    get_settings.cache_clear()
    return result, backend.submitted


def test_ray_sweep_equals_local_and_a_rerun_sends_nothing(local_ray, reference):
    expected, local_jobs = reference
    backend = RayBackend()
    result = run_sweep(zoo_config(), backend=backend)
    assert not result.failed and not result.errors
    assert table_markdown(result) == table_markdown(expected)
    assert table_csv(result) == table_csv(expected)
    assert [p.dev for p in result.points] == [p.dev for p in expected.points]  # every score, sample and rate
    # Cold cache: each point (6) and each table row (per group: 2 best, base, 2 experts) was one task.
    assert backend.submitted == local_jobs == 6 + 2 * 5

    entries = len(cache_store().entries())
    again = run_sweep(zoo_config(), backend=backend)
    assert backend.submitted == 16  # no new task: every job was answered from the cache
    assert len(cache_store().entries()) == entries
    assert table_markdown(again) == table_markdown(expected)
    record = recent_sweeps()[0]
    assert (record["backend"], record["state"], record["done"], record["total"]) == ("ray", "done", 16, 16)


def kill_a_running_task() -> int | None:
    """SIGKILL one Ray worker that is running a MergeScope job (its process title says so)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::mergescope_job"):
            proc.kill()
            return proc.pid
    return None


def test_a_killed_worker_is_retried_and_nothing_is_lost(local_ray, reference):
    expected, _ = reference
    killed = []

    def on_step(done, total, message):
        if not killed and "(dev)" in message:  # one point finished: the other worker is mid-point
            pid = kill_a_running_task()
            if pid:
                killed.append(pid)

    backend = RayBackend(max_retries=2)
    result = run_sweep(zoo_config(groups=("en-x",)), backend=backend, progress=on_step)
    assert killed, "no running task found to kill"
    assert not result.failed and not result.errors and len(result.points) == 3
    assert result.tables["en-x"] == expected.tables["en-x"]
    assert [p.dev for p in result.points] == [p.dev for p in expected.points if p.group == "en-x"]


def test_capture_jobs_on_ray_equal_captures_in_process(local_ray):
    config = zoo_config(groups=("en-x",))
    pairs = config.devtest["en-de"]
    recipe = build_recipe(config, "en-x", config.points()[0][1])
    jobs = [
        CaptureJob(
            "base", open_checkpoint(config.base_model).fingerprint, pairs, "cpu", checkpoint=str(config.base_model)
        ),
        CaptureJob("merge", content_hash(recipe), pairs, "cpu", recipe=recipe),
    ]
    backend = RayBackend()
    keys = capture_many(jobs, backend)
    assert backend.submitted == 2 and all(isinstance(k, str) for k in keys)
    assert capture_many(jobs, backend) == keys and backend.submitted == 2  # cached: nothing sent

    store = cache_store()
    for key, (model, tokenizer) in zip(
        keys, [load_model(config.base_model, device="cpu"), merge_into_model(recipe, device="cpu")]
    ):
        want = capture(model, tokenizer, pairs, device="cpu")
        got = Capture.from_entry(store.get(key))
        for span in want.hidden:
            torch.testing.assert_close(got.hidden[span], want.hidden[span], rtol=0, atol=1e-6)
            assert torch.equal(got.active[span], want.active[span])
            assert torch.equal(got.tokens[span], want.tokens[span])


# Last: the workers it crashes are replaced by cold ones, which would slow the tests after it.
def crash_worker(attempts_file):
    """A job whose worker dies every time (as if killed for memory), leaving a line per attempt."""
    import os

    with open(attempts_file, "a") as f:
        f.write("attempt\n")
    os._exit(1)


def test_a_job_whose_worker_keeps_dying_is_retried_a_bounded_number_of_times(local_ray, tmp_path):
    from ray.exceptions import WorkerCrashedError

    attempts = tmp_path / "attempts"
    outcomes = []
    backend = RayBackend(max_retries=1)
    stopped = backend.map(
        crash_worker, [str(attempts)], lambda i, value, error: outcomes.append((i, value, error)), lambda: False
    )
    assert not stopped and len(outcomes) == 1
    ((i, value, error),) = outcomes
    assert i == 0 and value is None and isinstance(error, WorkerCrashedError)
    assert attempts.read_text().count("attempt") == 2  # the first run and one retry, then reported
