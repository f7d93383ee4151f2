"""Benchmark: merge time and peak memory of TSV-Merge, Iso-C, Iso-CTS and PCB-Merging against
task arithmetic in the same run, on two model sets:

- the demo zoo: its five En→X experts on its base (Qwen2, hidden 128, 8 blocks, fp16 files);
- a random Qwen2 stack with Qwen2.5-0.5B's block shapes (hidden 896, MLP 4864, 14/2 heads),
  4 blocks and a 32 000-entry tied vocabulary, bf16, 4 experts = base + N(0, 0.002²); written
  once into bench/out/interference/ (git-ignored).

    .venv/bin/python bench/bench_merge_interference.py [--rounds 2] [--threads 1] [--sets zoo,qwen]

Each merge runs in a child process (the engine imported first, then the recipe planned and every
tensor merged in memory with engine.merge.iter_merged, nothing written), methods alternating
within a round so drifting load hits all of them. Reported: median wall and CPU seconds of the
merge itself, the ratio to task arithmetic's, and the child's peak RSS above its RSS after the
imports. Prints a Markdown table and writes bench/out/bench_merge_interference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"
METHODS = {  # the zoo sweep's middle settings
    "task_arithmetic": {"weight": 0.3},
    "tsv_merge": {"lambda": 0.3},
    "iso_c": {"lambda": 0.3},
    "iso_cts": {"lambda": 0.3},
    "pcb_merge": {"lambda": 1.0, "density": 0.1},
}
from bench.bench_merge import CONFIG as QWEN05_UNTIED  # noqa: E402

# Qwen2.5-0.5B's block shapes, 4 blocks and a 32k tied vocabulary: the SVD methods' time is in the blocks.
QWEN = {**QWEN05_UNTIED, "num_hidden_layers": 4, "vocab_size": 32000, "tie_word_embeddings": True}

CHILD = """
import json, os, resource, sys, time
import psutil, torch
torch.set_num_threads(int(sys.argv[2]))
from engine.merge import iter_merged, plan_merge
from engine.recipe import from_dict
rss0 = psutil.Process().memory_info().rss
recipe = from_dict(json.loads(sys.argv[1]))
wall, cpu = time.perf_counter(), time.process_time()
for _name, _tensor in iter_merged(plan_merge(recipe), "cpu"):
    pass
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall": wall, "cpu": cpu, "peak_above_imports": peak - rss0}))
"""


def qwen_checkpoints() -> tuple[Path, list[Path]]:
    """base + 4 experts with 0.5B block shapes; skipped when present."""
    import transformers
    from safetensors.torch import save_file

    from tests.tiny_models import make_tokenizer

    folders = [OUT / "interference" / name for name in ("base", "e1", "e2", "e3", "e4")]
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders[0], folders[1:]
    config = transformers.Qwen2Config(**QWEN, bos_token_id=1, eos_token_id=2, architectures=["Qwen2ForCausalLM"])
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(0)
    base = {
        k: torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()
    }
    tokenizer = make_tokenizer()
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: (v if i == 0 else v + torch.randn(v.shape, generator=g) * 0.002).to(torch.bfloat16)
            for k, v in base.items()
        }
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folders[0], folders[1:]


def zoo_checkpoints() -> tuple[Path, list[Path]]:
    models = REPO / "zoo" / "models"
    return models / "base", sorted(models.glob("expert-en-*"))


def run_child(base: Path, experts: list[Path], method: str, threads: int) -> dict:
    recipe = {
        "merge_method": method,
        "base_model": str(base),
        "models": [{"model": str(e)} for e in experts],
        "parameters": METHODS[method],
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MERGESCOPE_MODEL_ROOTS": str(base.parent)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(recipe), str(threads)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"{method} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", default="zoo,qwen")
    args = parser.parse_args()
    sets = {"zoo": zoo_checkpoints, "qwen": qwen_checkpoints}
    results = {}
    for name in args.sets.split(","):
        base, experts = sets[name]()
        runs = {m: [] for m in METHODS}
        for _ in range(args.rounds):
            for method in METHODS:
                runs[method].append(run_child(base, experts, method, args.threads))
        results[name] = {
            m: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "peak_above_imports")}
            for m, rs in runs.items()
        }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_merge_interference.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print("| set | method | wall s | CPU s | CPU × task arithmetic | peak RSS above imports |")
    print("|---|---|---|---|---|---|")
    for name, by_method in results.items():
        ta = by_method["task_arithmetic"]["cpu"]
        for m, r in by_method.items():
            print(
                f"| {name} | {m} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['cpu'] / ta:.1f}× | "
                f"{r['peak_above_imports'] / 2**20:.0f} MiB |"
            )


if __name__ == "__main__":
    main()
