"""The content-addressed cache: keys, atomic entries, checksums, the per-key lock, LRU eviction."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

import cache
from engine.__main__ import main as engine_cli
from engine.settings import REPO_ROOT, cache_store


def _entry(seed: int = 0, n: int = 16) -> cache.Entry:
    g = torch.Generator().manual_seed(seed)
    return cache.Entry(
        tensors={"x": torch.randn(n, 4, generator=g), "counts": torch.arange(n)},
        meta={"translations": ["ein Satz", "двадцать один"], "seed": seed},
    )


def test_roundtrip_keeps_tensors_and_meta():
    store = cache_store()
    key = cache.make_key("test", model="m", data="d", settings={"batch": 2})
    assert store.get(key) is None
    store.put(key, _entry(1), description="roundtrip")
    got = store.get(key)
    assert torch.equal(got.tensors["x"], _entry(1).tensors["x"])
    assert torch.equal(got.tensors["counts"], torch.arange(16))
    assert got.meta == _entry(1).meta
    [info] = store.entries()
    assert (info.kind, info.description) == ("test", "roundtrip")


@pytest.mark.parametrize(
    "changed",
    [
        {"kind": "other"},
        {"model": "m2"},
        {"data": "d2"},
        {"settings": {"batch": 3}},
        {"settings": {"batch": 2, "span": "tgt"}},
    ],
)
def test_changing_any_part_of_the_key_misses(changed):
    parts = {"kind": "test", "model": "m", "data": "d", "settings": {"batch": 2}}
    store = cache_store()
    store.put(cache.make_key(**parts), _entry())
    assert store.get(cache.make_key(**{**parts, **changed})) is None
    assert store.get(cache.make_key(**parts)) is not None


def test_key_is_canonical_and_salted(monkeypatch):
    a = cache.make_key("test", settings={"a": 1, "b": (1, 2)}, model="m")
    b = cache.make_key("test", model="m", settings={"b": [1, 2], "a": 1})
    assert a == b and a.kind == "test"
    assert pickle.loads(pickle.dumps(a)).kind == "test"
    monkeypatch.setitem(cache.CODE_VERSIONS, "test", "2")
    assert cache.make_key("test", model="m", settings={"a": 1, "b": [1, 2]}) != a
    with pytest.raises(TypeError):
        cache.make_key("test", model=object())


def test_truncated_entry_is_recomputed_not_served():
    store = cache_store()
    key = cache.make_key("test", n=1)
    store.put(key, _entry(1))
    path = store.path_for(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    calls = []

    def compute():
        calls.append(1)
        return _entry(1)

    got = store.get_or_compute(key, compute)
    assert calls == [1]
    assert torch.equal(got.tensors["x"], _entry(1).tensors["x"])
    assert store.get(key) is not None and store.verify() == []


def test_corrupt_entry_is_found_by_verify_and_cli(capsys):
    store = cache_store()
    key = cache.make_key("test", n=2)
    store.put(key, _entry(2))
    path = store.path_for(key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    assert engine_cli(["cache", "verify"]) == 0
    assert f"bad: {key}" in capsys.readouterr().out
    assert store.get(key) is None and not path.exists()


def test_failed_compute_stores_nothing():
    store = cache_store()
    key = cache.make_key("test", n=3)

    def compute():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        store.get_or_compute(key, compute)
    assert store.entries() == []
    assert not any(p.is_file() for p in store.entries_dir.rglob("*"))
    with pytest.raises(cache.CacheError):
        store.get_or_compute(key, lambda: cache.Entry(meta={"x": object()}))
    assert store.entries() == []


def test_eviction_respects_the_cap_least_recently_used_first(tmp_path):
    one = len(cache.store.encode_entry(_entry(0)))
    store = cache.Store(tmp_path / "small", max_bytes=3 * one + one // 2)
    keys = [cache.make_key("test", i=i) for i in range(5)]
    for i, key in enumerate(keys[:3]):
        store.put(key, _entry(i))
        time.sleep(0.01)
    store.get(keys[0])  # now the most recently used of the three
    store.put(keys[3], _entry(3))
    present = [store.get(k) is not None for k in keys[:4]]
    assert present == [True, False, True, True]
    assert store.total_bytes() <= store.max_bytes
    for key in keys:
        store.put(key, _entry(9))
        assert store.total_bytes() <= store.max_bytes
    assert store.get(keys[-1]) is not None


def test_a_new_index_is_in_wal_mode_before_any_operation(tmp_path):
    # Operations open plain connections and rely on the mode the file keeps: converting it there,
    # in several processes at once, failed at once with "database is locked".
    import sqlite3

    store = cache.Store(tmp_path / "c", max_bytes=1 << 20)
    db = sqlite3.connect(store.index_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


RACE_WORKER = """
import sys, time
from pathlib import Path
import torch
import cache

cache_dir, evidence, worker = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
store = cache.Store(cache_dir, max_bytes=1 << 30)
key = cache.make_key("test", race=True)

def compute():
    (evidence / f"computed-by-{worker}").touch()
    time.sleep(0.5)  # long enough that the other process arrives while this one computes
    return cache.Entry({"x": torch.arange(7.0)}, {"n": 7})

(evidence / f"ready-{worker}").touch()
while not (evidence / "go").exists():  # a file barrier: both start get_or_compute together
    time.sleep(0.01)
entry = store.get_or_compute(key, compute, description="race")
torch.save(entry.tensors["x"], evidence / f"result-{worker}.pt")
"""


def test_two_processes_racing_on_one_key_compute_once(tmp_path):
    # Separate interpreters, not multiprocessing: spawn re-imports __main__, which other tests
    # in this process (AppTest) may have pointed at the dashboard script.
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE_WORKER, str(tmp_path / "c"), str(evidence), str(i)], env=env)
        for i in range(2)
    ]
    deadline = time.time() + 120
    while len(list(evidence.glob("ready-*"))) < 2:
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a race worker did not start"
        time.sleep(0.01)
    (evidence / "go").touch()
    for p in procs:
        assert p.wait(120) == 0
    assert len(list(evidence.glob("computed-by-*"))) == 1
    results = [torch.load(evidence / f"result-{i}.pt", weights_only=True) for i in range(2)]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], torch.arange(7.0))


def test_cli_ls_and_gc(capsys):
    store = cache_store()
    key = cache.make_key("test", n=4)
    store.put(key, _entry(4), description="listed")
    orphan = store.entries_dir / "ab" / ("ab" + "0" * 62 + ".safetensors")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"junk")
    old_tmp = store.entries_dir / "ab" / ".junk.tmp"
    old_tmp.write_bytes(b"x")
    os.utime(old_tmp, (0, 0))
    assert engine_cli(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert key[:16] in out and "listed" in out and "1 entries" in out
    assert engine_cli(["cache", "gc"]) == 0
    assert "orphans: 1" in capsys.readouterr().out
    assert not orphan.exists() and not old_tmp.exists() and store.get(key) is not None


def test_cli_works_without_model_roots(monkeypatch, tmp_path, capsys):
    from engine.settings import get_settings

    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(tmp_path / "no-such-folder"))
    get_settings.cache_clear()
    assert engine_cli(["cache", "ls"]) == 0
    assert "0 entries" in capsys.readouterr().out
    monkeypatch.setenv("MERGESCOPE_CACHE_MAX_GB", "lots")
    get_settings.cache_clear()
    assert engine_cli(["cache", "gc"]) == 2
    assert "MERGESCOPE_CACHE_MAX_GB" in capsys.readouterr().err
