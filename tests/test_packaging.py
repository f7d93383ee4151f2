"""pyproject.toml: `pip install -e .` gives the `mergescope` command, the same CLI as `python -m engine`.

The fresh venv borrows this venv's installed packages (pip and setuptools included) through a
.pth file, so the test installs only the project itself: no download, no build isolation.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

from engine.settings import REPO_ROOT


def test_an_editable_install_gives_the_mergescope_command(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            "-e",
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    command = env_dir / "bin" / "mergescope"
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "merge" in helped.stdout and "checkpoints" in helped.stdout, helped.stderr
    listed = subprocess.run([command, "checkpoints", "--json"], capture_output=True, text=True, cwd=tmp_path)
    as_module = subprocess.run(
        [sys.executable, "-m", "engine", "checkpoints", "--json"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == json.loads(as_module.stdout)
