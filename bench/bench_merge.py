"""Benchmark: our streaming merge vs mergekit's CLI on the same YAML, 4 experts + base of a
randomly initialised ~0.6B Qwen2 (Qwen2.5-0.5B shapes, untied head), bf16 on disk.

    .venv/bin/python bench/bench_merge.py                  # ties and task_arithmetic, CPU
    .venv/bin/python bench/bench_merge.py --methods ties --device cuda

Checkpoints are written once into bench/out/ (git-ignored; ~6.3 GB). Each tool runs as a
child process on warm page cache, both with the same number of torch threads (OMP_NUM_THREADS),
alternately (mergekit, ours, mergekit, ours, ...) so drifting load from other work hits both;
we record wall and CPU time, peak RSS (from /usr/bin/time -v), logical bytes moved (5 inputs
read + 1 output written) as a share of the machine's memory-copy bandwidth measured in the
same run, how far the two outputs are apart, and how far each is from a float64 reference
computed here on a few tensors. Prints a Markdown table at the end.
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
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
)


def build_checkpoints() -> list[Path]:
    """base + experts (base + N(0, 0.002²) noise), bf16 safetensors; skipped when present."""
    import transformers
    from safetensors.torch import save_file

    from tests.tiny_models import make_tokenizer

    folders = [OUT / "models" / "base"] + [OUT / "models" / f"expert{i}" for i in range(1, EXPERTS + 1)]
    config = transformers.Qwen2Config(
        **CONFIG, bos_token_id=1, eos_token_id=2, pad_token_id=0, architectures=["Qwen2ForCausalLM"]
    )
    config.dtype = torch.bfloat16
    if all((f / "model.safetensors").is_file() for f in folders):
        for folder in folders:
            config.save_pretrained(folder)
        return folders
    with torch.device("meta"):
        shapes = {
            k: tuple(v.shape)
            for k, v in transformers.AutoModelForCausalLM.from_config(config).state_dict().items()
            if "rotary" not in k
        }
    tokenizer = make_tokenizer()
    g = torch.Generator().manual_seed(0)
    base = {
        k: (torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
        for k, s in shapes.items()
    }
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        tensors = (
            base
            if i == 0
            else {
                k: (v.float() + torch.randn(v.shape, generator=g) * 0.002).to(torch.bfloat16) for k, v in base.items()
            }
        )
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
    with (
        safe_open(ours / "model.safetensors", "pt") as a,
        safe_open(theirs / "model.safetensors", "pt") as b,
        safe_open(base / "model.safetensors", "pt") as c,
    ):
        assert set(a.keys()) == set(b.keys()), set(a.keys()) ^ set(b.keys())
        for name in a.keys():
            x, y, z = a.get_tensor(name).float(), b.get_tensor(name).float(), c.get_tensor(name).float()
            worst_abs = max(worst_abs, float((x - y).abs().max()))
            diff2 += float((x - y).double().square().sum())
            tv2 += float((y - z).double().square().sum())
            names += 1
    return {"tensors": names, "max_abs_diff": worst_abs, "rel_to_task_vector": math.sqrt(diff2 / tv2)}


REFERENCE_TENSORS = (
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.11.self_attn.q_proj.weight",
    "model.layers.23.mlp.gate_proj.weight",
    "model.layers.5.input_layernorm.weight",
)


def reference64(recipe_method: str, name: str, folders: list[Path], per_model: dict) -> torch.Tensor:
    """The merge of one tensor in float64, written from the papers' definitions (not our engine's code).

    TIES keeps the k = density·numel largest |delta| per model (equal magnitudes: first in flat
    order), elects per entry the sign of the summed kept weighted deltas and averages the
    agreeing ones by their weights; task arithmetic adds the weighted deltas.
    """
    from safetensors import safe_open

    def load(folder: Path) -> torch.Tensor:
        with safe_open(folder / "model.safetensors", "pt") as f:
            return f.get_tensor(name).double()

    base = load(folders[0])
    w = per_model["weight"]
    deltas = [load(f) - base for f in folders[1:]]
    if recipe_method == "task_arithmetic":
        return base + sum(w * d for d in deltas)
    kept = []
    for d in deltas:
        flat = d.reshape(-1)
        k = max(1, int(per_model["density"] * flat.numel()))
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
        mask = torch.zeros_like(flat)
        mask[order] = 1
        kept.append(w * (flat * mask).reshape(d.shape))
    stacked = torch.stack(kept)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = (torch.sign(stacked) == elected).double()
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1
    return base + (stacked * agree).sum(0) / divisor


def distance_to_reference(out: Path, method: str, folders: list[Path], per_model: dict) -> float:
    """‖out − ref‖ / ‖ref − base‖ over REFERENCE_TENSORS, ref = float64 merge rounded to bf16."""
    from safetensors import safe_open

    diff2 = tv2 = 0.0
    with safe_open(out / "model.safetensors", "pt") as f, safe_open(folders[0] / "model.safetensors", "pt") as b:
        for name in REFERENCE_TENSORS:
            ref = reference64(method, name, folders, per_model).to(torch.bfloat16).double()
            diff2 += float((f.get_tensor(name).double() - ref).square().sum())
            tv2 += float((ref - b.get_tensor(name).double()).square().sum())
    return math.sqrt(diff2 / tv2)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | runs | load avg | mergekit wall / CPU | ours wall / CPU | ratio wall / CPU | peak RSS mergekit | "
        "peak RSS ours | outputs apart: max \\|Δ\\| · ‖Δ‖/‖tv‖ | from float64 ref: mergekit · ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['rounds']}×2, {r['threads']} thread(s) | {r['load_avg']} | "
            f"{r['mergekit_wall_s']} s / {r['mergekit_cpu_s']} s | {r['ours_wall_s']} s / {r['ours_cpu_s']} s | "
            f"{r['wall_ratio']:.2f} / **{r['cpu_ratio']:.2f}** | {r['mergekit_peak_rss_gb']} GB ({r['mergekit_rss_over_model']}× model) | "
            f"**{r['ours_peak_rss_gb']} GB ({r['ours_rss_over_model']}× model)** | "
            f"{r['max_abs_diff']:.2g} · {100 * r['rel_to_task_vector']:.2f} % | "
            f"{100 * r['mergekit_from_ref64']:.2f} % · {100 * r['ours_from_ref64']:.2f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ties,task_arithmetic")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both tools (OMP_NUM_THREADS); 1 suits a machine shared with other work",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per tool and method")
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
    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, torch {torch.__version__}, both tools run with {args.threads} torch thread(s)"
    )
    print(
        f"model: {params / 1e6:.0f}M params, {model_bytes / 1e9:.2f} GB bf16; memory-copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    env = {
        **os.environ,
        "MERGESCOPE_MODEL_ROOTS": str(OUT / "models"),
        "MERGESCOPE_CACHE_DIR": str(OUT / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    # Fingerprints (the recipe hash in the model card) are computed once per checkpoint and
    # remembered, as in the dashboard; compute them before timing so runs measure the merge.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from engine.checkpoints import fingerprint; [fingerprint(p) for p in sys.argv[1:]]",
            *map(str, folders),
        ],
        env={**env, "PYTHONPATH": str(REPO)},
        check=True,
    )
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
        ms_cmd = [
            sys.executable,
            "-m",
            "engine",
            "merge",
            str(recipe),
            "--out",
            str(out_ms),
            "--device",
            args.device,
            "--no-progress",
            "--overwrite",
        ]
        loads, mk_runs, ms_runs = [], [], []
        for _ in range(args.rounds):
            shutil.rmtree(out_mk, ignore_errors=True)
            loads.append(os.getloadavg()[0])
            mk_runs.append(run_measured(mk_cmd, env))
            loads.append(os.getloadavg()[0])
            ms_runs.append(run_measured(ms_cmd, {**env, "PYTHONPATH": str(REPO)}))
        mk = {k: sum(r[k] for r in mk_runs) / len(mk_runs) for k in ("wall", "cpu")}
        ms = {k: sum(r[k] for r in ms_runs) / len(ms_runs) for k in ("wall", "cpu")}
        mk["peak_rss"] = max(r["peak_rss"] for r in mk_runs)
        ms["peak_rss"] = max(r["peak_rss"] for r in ms_runs)
        diff = compare(out_ms, out_mk, folders[0])
        per_model = {"weight": 0.5, "density": 0.5} if method == "ties" else {"weight": 0.25}
        row = dict(
            method=method,
            device=args.device,
            threads=args.threads,
            rounds=args.rounds,
            load_avg=f"{min(loads):.1f}–{max(loads):.1f}",
            mergekit_wall_s=round(mk["wall"], 1),
            ours_wall_s=round(ms["wall"], 1),
            wall_ratio=round(ms["wall"] / mk["wall"], 3),
            mergekit_cpu_s=round(mk["cpu"], 1),
            ours_cpu_s=round(ms["cpu"], 1),
            cpu_ratio=round(ms["cpu"] / mk["cpu"], 3),
            cpu_ratio_per_round=[round(b["cpu"] / a["cpu"], 3) for a, b in zip(mk_runs, ms_runs)],
            mergekit_peak_rss_gb=round(mk["peak_rss"] / 1e9, 2),
            ours_peak_rss_gb=round(ms["peak_rss"] / 1e9, 2),
            mergekit_rss_over_model=round(mk["peak_rss"] / model_bytes, 2),
            ours_rss_over_model=round(ms["peak_rss"] / model_bytes, 2),
            ours_share_of_copy_bandwidth=round(moved / ms["wall"] / bandwidth, 3),
            mergekit_share_of_copy_bandwidth=round(moved / mk["wall"] / bandwidth, 3),
            **diff,
            mergekit_from_ref64=distance_to_reference(out_mk, method, folders, per_model),
            ours_from_ref64=distance_to_reference(out_ms, method, folders, per_model),
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    (OUT / "bench_merge.json").write_text(json.dumps(rows, indent=2))
    print(
        f"\nCommand: .venv/bin/python bench/bench_merge.py --methods {args.methods} --threads {args.threads} "
        f"--rounds {args.rounds}; "
        f"memory-copy bandwidth {bandwidth / 1e9:.1f} GB/s\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
