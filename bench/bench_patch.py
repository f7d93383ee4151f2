"""Benchmark: patching a merged model in memory (engine.patch) against a fresh merge, per direction.

A routed patching experiment needs one patched model per direction. engine.patch merges once and
then, per direction, copies the routed blocks of that direction's expert into the live merged
model and restores them afterwards; the alternative is a fresh merge per direction. Measured in
one process, alternately, on:

- the demo zoo: examples/patch-en-x.yaml (five En→X experts, task arithmetic), 8 blocks;
- a random Qwen2 of Qwen2.5-0.5B's shapes (24 blocks, hidden 896, MLP 4864, vocab 151 936, tied
  embeddings), base + 2 experts in bf16, written once into bench/out/patch-models (git-ignored).

    .venv/bin/python bench/bench_patch.py            # both; OMP_NUM_THREADS=1 unless set

Reported: median wall and CPU seconds of a fresh `merge_into_model` and of one patch + restore
(last:k+norm for k = 1, 4 and all blocks), their ratio, and the bytes a patch holds (the replaced
tensors, kept to restore them). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "patch-models"

from bench.bench_merge import CONFIG as QWEN05_UNTIED  # noqa: E402

QWEN05 = {**QWEN05_UNTIED, "tie_word_embeddings": True}  # Qwen2.5-0.5B's shapes and its tied head


def build_qwen05() -> Path:
    """base + 2 experts (base + N(0, 0.002²)), bf16 safetensors; skipped when present."""
    import transformers
    from safetensors.torch import save_file

    from tests.tiny_models import make_tokenizer

    folders = [OUT / "base", OUT / "expert-en-de", OUT / "expert-en-es"]
    recipe = OUT / "recipe.yaml"
    if not all((f / "model.safetensors").is_file() for f in folders):
        config = transformers.Qwen2Config(
            **QWEN05, bos_token_id=1, eos_token_id=2, pad_token_id=0, architectures=["Qwen2ForCausalLM"]
        )
        config.dtype = torch.bfloat16
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
            shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}  # tied head listed once
        g = torch.Generator().manual_seed(0)
        base = {
            n: (torch.ones(s) if n.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
            for n, s in shapes.items()
        }
        tokenizer = make_tokenizer()
        for i, folder in enumerate(folders):
            folder.mkdir(parents=True, exist_ok=True)
            tensors = (
                base
                if i == 0
                else {n: (v.float() + torch.randn(v.shape, generator=g) * 0.002).to(v.dtype) for n, v in base.items()}
            )
            save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
            config.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
    lines = ["merge_method: task_arithmetic", f"base_model: {folders[0]}", "models:"]
    lines += [f"  - model: {f}\n    parameters: {{weight: 0.5}}" for f in folders[1:]]
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def measure(recipe_path: Path, label: str, merges: int, patches: int) -> list[dict]:
    from engine.checkpoints import open_checkpoint
    from engine.merge import merge_into_model
    from engine.patch.layers import parse_layer_set
    from engine.patch.patching import apply_patch, restore
    from engine.recipe import load

    recipe = load(recipe_path)
    expert = open_checkpoint(recipe.models[0].model)
    layers = expert.summary.layers
    model, _ = merge_into_model(recipe, device="cpu")
    rows = []
    for k in sorted({1, 4, layers}):
        spec = parse_layer_set(f"last:{k}+norm", layers)
        held = {}

        def patch_and_restore(spec=spec, held=held):
            saved = apply_patch(model, expert, spec)
            held["bytes"] = sum(t.numel() * t.element_size() for t in saved.values())
            restore(model, saved)

        # Alternate so drifting load from other work hits both sides alike.
        merge_wall, merge_cpu, patch_wall, patch_cpu = [], [], [], []
        for _ in range(merges):
            w, c = timed(lambda: merge_into_model(recipe, device="cpu"), 1)
            merge_wall.append(w)
            merge_cpu.append(c)
            w, c = timed(patch_and_restore, patches)
            patch_wall.append(w)
            patch_cpu.append(c)
        mw, mc, pw, pc = (statistics.median(x) for x in (merge_wall, merge_cpu, patch_wall, patch_cpu))
        rows.append(
            dict(
                model=label,
                layers=f"last:{k}+norm of {layers}",
                merge=f"{mw:.2f} s / {mc:.2f} s",
                patch=f"{pw * 1000:.0f} ms / {pc * 1000:.0f} ms",
                ratio=f"{pw / mw:.3f} / {pc / mc:.3f}",
                held=f"{held['bytes'] / 1e6:.1f} MB",
            )
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=3, help="fresh merges per row (alternating with patches)")
    parser.add_argument("--patches", type=int, default=5, help="patch + restore calls per merge")
    parser.add_argument("--skip-large", action="store_true", help="the zoo only")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()[0]
    rows = measure(REPO / "examples" / "patch-en-x.yaml", "demo zoo (fp16 on disk)", args.merges, args.patches)
    if not args.skip_large:
        from engine.checkpoints.paths import trusting

        with trusting([OUT]):  # outside the model roots: the benchmark's own files
            rows += measure(build_qwen05(), "random Qwen2, 0.5B shapes (bf16 on disk)", max(1, args.merges - 1), 3)
    print(f"\nthreads {torch.get_num_threads()}, load average {load_before:.1f} → {os.getloadavg()[0]:.1f}\n")
    print("| model | patched set | fresh merge wall / CPU | patch + restore wall / CPU | ratio wall / CPU | held |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['layers']} | {r['merge']} | {r['patch']} | **{r['ratio']}** | {r['held']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
