"""The Scores page's sweep section under AppTest: progress bars from planted progress records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from streamlit.testing.v1 import AppTest

from engine.settings import REPO_ROOT, get_settings
from tests.browser_harness import demo_env, tiny_zoo  # noqa: F401  (fixtures)


def plant(folder, name, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "id": name,
        "backend": "ray",
        "state": "running",
        "current": "",
        "failed": 0,
        "started": 0.0,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **fields,
    }
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_scores_page_shows_running_and_recent_sweeps(demo_env):
    folder = get_settings().cache_dir / "sweeps"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    plant(folder, "a", source="grid-a.yaml", done=3, total=12, current="en-x: ties density=0.5 (dev)", updated=now)
    plant(
        folder, "b", source="grid-b.yaml", backend="local", state="done", done=40, total=40, failed=2, updated=now - 600
    )
    plant(folder, "c", source="grid-c.yaml", done=5, total=20, pid=int(gone.stdout), updated=now - 60)
    (folder / "broken.json").write_text("{not json")

    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/scores.py").run()
    assert not at.exception, at.exception
    assert [e.label for e in at.expander if e.label.startswith("Sweeps")] == ["Sweeps: 1 running, 2 recent"]
    bars = at.get("progress")
    assert [b.proto.value for b in bars] == [25, 25, 100]  # newest first: a, c, b
    texts = [b.proto.text for b in bars]
    assert texts[0].startswith("grid-a.yaml on ray: running, 3/12 steps") and "ties density=0.5" in texts[0]
    assert "interrupted, 5/20" in texts[1]  # its process is gone
    assert texts[2].startswith("grid-b.yaml on local: done, 40/40 steps, 2 failed")


def test_no_section_without_sweeps(demo_env):
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/scores.py").run()
    assert not at.exception, at.exception
    assert not [e for e in at.expander if e.label.startswith("Sweeps")] and not at.get("progress")
