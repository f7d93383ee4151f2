"""Benchmark: our streaming merge vs mergekit's CLI on the same YAML, 4 experts + base of a
randomly initialised ~0.6B Qwen2 (Qwen2.5-0.5B shapes, untied head), bf16 on disk.

    .venv/bin/python bench/bench_merge.py                  # ties and task_arithmetic, CPU
    .venv/bin/python bench/bench_merge.py --methods ties --device cuda

Checkpoints are written once into bench/out/ (git-ignored; ~6.3 GB). Each tool runs as a
child process on warm page cache; we record wall time, peak RSS of the child's process tree
(from /usr/bin/time -v), logical bytes moved (5 inputs read + 1 output written) as a
share of the machine's memory-copy bandwidth measured in the same run, and how far the two
outputs are apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
VENV_BIN = Path(sys.executable).parent
EXPERTS = 4

CONFIG = dict(  # Qwen2.5-0.5B's shapes; an untied head so both tools merge the same tensor set
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=False,
)


def build_checkpoints() -> list[Path]:
    """base + experts (base + N(0, 0.002²) noise), bf16 safetensors; skipped when present."""
    import transformers
    from safetensors.torch import save_file

    from tests.tiny_models import make_tokenizer

    folders = [OUT / "models" / "base"] + [OUT / "models" / f"expert{i}" for i in range(1, EXPERTS + 1)]
    config = transformers.Qwen2Config(**CONFIG, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                      architectures=["Qwen2ForCausalLM"])
    config.dtype = torch.bfloat16
    if all((f / "model.safetensors").is_file() for f in folders):
        for folder in folders:
            config.save_pretrained(folder)
        return folders
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.AutoModelForCausalLM.from_config(config).state_dict().items()
                  if "rotary" not in k}
    tokenizer = make_tokenizer()
    g = torch.Generator().manual_seed(0)
    base = {k: (torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
            for k, s in shapes.items()}
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        tensors = base if i == 0 else {
            k: (v.float() + torch.randn(v.shape, generator=g) * 0.002).to(torch.bfloat16) for k, v in base.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del tensors
    return folders


def write_recipe(method: str, folders: list[Path]) -> Path:
    base, experts = folders[0], folders[1:]
    per_model = {"weight": 0.5, "density": 0.5} if method == "ties" else {"weight": 0.25}
    lines = [f"merge_method: {method}", f"base_model: {base}", "dtype: bfloat16", "models:"]
    for e in experts:
        lines += [f"  - model: {e}", "    parameters: " + json.dumps(per_model).replace('"', "")]
    path = OUT / f"{method}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_measured(cmd: list[str], env: dict) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS of a command, from /usr/bin/time -v.

    time(1) forks the command from its own small process, so the kernel's RSS high-water mark
    is the command's own (a child forked from this process would inherit our RSS). CPU seconds
    are less sensitive than wall time to other work on a shared machine.
    """
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    fields = {}
    for line in err.splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return {"wall": wall, "cpu": cpu, "peak_rss": int(fields["Maximum resident set size (kbytes)"]) * 1024}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Memory-copy bandwidth in bytes/s, counting the bytes read plus the bytes written."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def compare(ours: Path, theirs: Path, base: Path) -> dict:
    """How far apart the outputs are: max |Δ|, and ‖ours − theirs‖ / ‖theirs − base‖ (relative to the task vector)."""
    from safetensors import safe_open

    worst_abs, diff2, tv2, names = 0.0, 0.0, 0.0, 0
    with safe_open(ours / "model.safetensors", "pt") as a, safe_open(theirs / "model.safetensors", "pt") as b, \
            safe_open(base / "model.safetensors", "pt") as c:
        assert set(a.keys()) == set(b.keys()), set(a.keys()) ^ set(b.keys())
        for name in a.keys():
            x, y, z = a.get_tensor(name).float(), b.get_tensor(name).float(), c.get_tensor(name).float()
            worst_abs = max(worst_abs, float((x - y).abs().max()))
            diff2 += float((x - y).double().square().sum())
            tv2 += float((y - z).double().square().sum())
            names += 1
    return {"tensors": names, "max_abs_diff": worst_abs, "rel_to_task_vector": math.sqrt(diff2 / tv2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ties,task_arithmetic")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    t = time.perf_counter()
    folders = build_checkpoints()
    print(f"checkpoints ready in {time.perf_counter() - t:.0f}s under {OUT / 'models'}")
    model_bytes = (folders[0] / "model.safetensors").stat().st_size
    params = model_bytes // 2
    for f in folders:  # warm page cache for both tools
        with open(f / "model.safetensors", "rb") as fh:
            while fh.read(1 << 26):
                pass
    bandwidth = copy_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: {params / 1e6:.0f}M params, {model_bytes / 1e9:.2f} GB bf16; memory-copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    env = {**os.environ, "MERGESCOPE_MODEL_ROOTS": str(OUT / "models"), "MERGESCOPE_CACHE_DIR": str(OUT / "cache"),
           "HF_HUB_OFFLINE": "1"}
    # Fingerprints (the recipe hash in the model card) are computed once per checkpoint and
    # remembered, as in the dashboard; compute them before timing so runs measure the merge.
    subprocess.run([sys.executable, "-c", "import sys; from engine.checkpoints import fingerprint; "
                    "[fingerprint(p) for p in sys.argv[1:]]", *map(str, folders)],
                   env={**env, "PYTHONPATH": str(REPO)}, check=True)
    moved = (len(folders) + 1) * model_bytes  # every input read once, the output written once
    rows = []
    for method in args.methods.split(","):
        recipe = write_recipe(method, folders)
        out_mk, out_ms = OUT / f"mergekit_{method}", OUT / f"mergescope_{method}"
        for d in (out_mk, out_ms):
            shutil.rmtree(d, ignore_errors=True)
        mk_cmd = [str(VENV_BIN / "mergekit-yaml"), str(recipe), str(out_mk), "--quiet"]
        if args.device == "cuda":
            mk_cmd.append("--cuda")
        ms_cmd = [sys.executable, "-m", "engine", "merge", str(recipe), "--out", str(out_ms), "--device", args.device,
                  "--no-progress"]
        load = os.getloadavg()[0]
        mk = run_measured(mk_cmd, env)
        ms = run_measured(ms_cmd, {**env, "PYTHONPATH": str(REPO)})
        diff = compare(out_ms, out_mk, folders[0])
        row = dict(method=method, device=args.device, load_avg_1min_before=round(load, 1),
                   mergekit_wall_s=round(mk["wall"], 1), ours_wall_s=round(ms["wall"], 1),
                   wall_ratio=round(ms["wall"] / mk["wall"], 3),
                   mergekit_cpu_s=round(mk["cpu"], 1), ours_cpu_s=round(ms["cpu"], 1),
                   cpu_ratio=round(ms["cpu"] / mk["cpu"], 3),
                   mergekit_peak_rss_gb=round(mk["peak_rss"] / 1e9, 2), ours_peak_rss_gb=round(ms["peak_rss"] / 1e9, 2),
                   mergekit_rss_over_model=round(mk["peak_rss"] / model_bytes, 2),
                   ours_rss_over_model=round(ms["peak_rss"] / model_bytes, 2),
                   ours_share_of_copy_bandwidth=round(moved / ms["wall"] / bandwidth, 3),
                   mergekit_share_of_copy_bandwidth=round(moved / mk["wall"] / bandwidth, 3), **diff)
        print(json.dumps(row), flush=True)
        rows.append(row)
    (OUT / "bench_merge.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
