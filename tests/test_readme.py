"""README cannot go stale: each command in its code blocks runs here, or is named with the test
(or CI step) that exercises it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import REPO_ROOT, ZOO_DIR

README = (REPO_ROOT / "README.md").read_text()

# Commands too slow or impossible to run literally here, and what exercises them instead.
EXERCISED_ELSEWHERE = {
    # The browser tests start the dashboard with MERGESCOPE_MODEL_ROOTS pointing at their own models.
    "MERGESCOPE_MODEL_ROOTS=": "tests/test_browser.py::test_merge_scores_layers_samples_and_shared_link",
    "make demo": "tests/test_dockerfile.py::test_it_runs_the_command_readme_uses_as_a_non_root_user",
    "make test": ".ci/run",
    "python -m engine zoo build": "tests/test_zoo_build.py::test_micro_build_end_to_end",
    "docker build": "tests/test_dockerfile.py::test_every_copied_path_exists_and_is_not_ignored",
    "docker run": "tests/test_dockerfile.py::test_healthcheck_path_is_streamlits_own",
}

# What each command run here must leave behind, beyond exiting 0.
EXPECTED_OUTPUT = {
    "merge examples/ties-en-x": lambda cwd: (cwd / "merged" / "ties-en-x" / "mergekit_config.yml").is_file(),
    "merge examples/stack-en-es": lambda cwd: (
        json.loads((cwd / "merged" / "stack-en-es" / "config.json").read_text())["num_hidden_layers"] == 12
    ),
    "evaluate": lambda cwd: "chrF" in (cwd / "scores.md").read_text(),
    "analyze": lambda cwd: json.loads((cwd / "report.json").read_text()),
    "sweep examples": lambda cwd: (cwd / "sweep-small" / "table.md").is_file(),
    "patch": lambda cwd: "| en-es |" in (cwd / "patch.md").read_text(),
    "schedule": lambda cwd: "merge_method: task_arithmetic" in (cwd / "lines.yaml").read_text(),
}


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def exercised_elsewhere(command: str) -> str | None:
    return next((where for prefix, where in EXERCISED_ELSEWHERE.items() if command.startswith(prefix)), None)


def test_every_readme_command_is_run_here_or_named_elsewhere():
    commands = readme_commands()
    assert len(commands) >= 12
    for command in commands:
        where = exercised_elsewhere(command)
        if where is None:
            assert command.startswith("python -m "), f"README command neither run here nor mapped: {command}"
            continue
        if where == ".ci/run":
            assert command in (REPO_ROOT / ".ci/run").read_text()
            continue
        file, test = where.split("::")
        assert re.search(rf"^def {test}\(", (REPO_ROOT / file).read_text(), re.M), f"{command}: {where} is gone"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder where README's relative paths (zoo/, examples/) resolve to the repository's."""
    cwd = tmp_path_factory.mktemp("readme")
    for name in ("zoo", "examples"):
        (cwd / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    return cwd


RUNNABLE = [c for c in readme_commands() if c.startswith("python -m ") and exercised_elsewhere(c) is None]


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs(command, workdir):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MERGESCOPE_MODEL_ROOTS": str(ZOO_DIR / "models"),
        "MERGESCOPE_CACHE_DIR": str(workdir / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable] + shlex.split(command)[1:]
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    check = next((f for key, f in EXPECTED_OUTPUT.items() if command.startswith(f"python -m engine {key}")), None)
    if check:
        assert check(Path(workdir)), command
