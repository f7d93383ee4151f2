"""What can be checked of the Dockerfile without a container engine."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

from engine import settings
from engine.settings import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def dockerignore_patterns() -> list[str]:
    return [p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p.strip()]


def test_every_copied_path_exists_and_is_not_ignored():
    ignored = dockerignore_patterns()
    copies = [args for word, args in instructions() if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
            assert not any(fnmatch.fnmatch(source, pat) for pat in ignored), f"{source} is excluded by .dockerignore"


def test_it_installs_the_projects_own_requirements_and_torch_pin():
    run_lines = " ".join(args for word, args in instructions() if word == "RUN")
    assert "pip install -r /tmp/requirements.txt" in run_lines
    assert any(word == "COPY" and args.split()[0] == "requirements.txt" for word, args in instructions())
    torch_pin = next(l for l in (REPO_ROOT / "requirements.txt").read_text().splitlines() if l.startswith("torch=="))
    assert torch_pin == "torch==2.13.0"
    assert "grep -E '^torch==' /tmp/requirements.txt" in run_lines  # the image takes the pin from the same file


def test_it_runs_the_command_readme_uses_as_a_non_root_user():
    (cmd,) = [json.loads(args) for word, args in instructions() if word == "CMD"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    demo_recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M).group(1)
    assert demo_recipe.split()[1:] == cmd[1:] == ["-m", "streamlit", "run", "app.py"]
    assert "make demo" in (REPO_ROOT / "README.md").read_text()
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_settings_it_sets_are_ones_the_engine_reads():
    env_args = " ".join(args for word, args in instructions() if word == "ENV")
    names = set(re.findall(r"(MERGESCOPE_[A-Z_]+)=", env_args))
    assert names == {"MERGESCOPE_MODEL_ROOTS", "MERGESCOPE_CACHE_DIR"}
    assert all(name in settings.__doc__ for name in names)
    volumes = json.loads(next(args for word, args in instructions() if word == "VOLUME"))
    assert "/models" in volumes and "/cache" in volumes
    assert ".venv" in dockerignore_patterns() and ".mergescope-cache" in dockerignore_patterns()


def test_healthcheck_path_is_streamlits_own(tmp_path):
    healthcheck = next(args for word, args in instructions() if word == "HEALTHCHECK")
    path = re.search(r"127\.0\.0\.1:8501(/[\w/]+)", healthcheck).group(1)
    script = tmp_path / "hello.py"
    script.write_text("import streamlit as st\nst.write('hello')\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(script),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    assert response.status == 200 and response.read().strip() == b"ok"
                    break
            except OSError:
                assert time.time() < deadline, f"streamlit never answered on {path}"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_smoke_script_checks_what_the_image_declares():
    script = (REPO_ROOT / "scripts" / "docker-smoke.sh").read_text()
    healthcheck = next(args for word, args in instructions() if word == "HEALTHCHECK")
    health_path = re.search(r"127\.0\.0\.1:8501(/[\w/]+)", healthcheck).group(1)
    user = [args for word, args in instructions() if word == "USER"][-1]
    assert f":18501{health_path}" in script and "-p 127.0.0.1:18501:8501" in script
    assert f'= "{user}" ]' in script and "TORCH_VARIANT" in script
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "docker-smoke.sh")]).returncode == 0
