"""Benchmark: one zoo training step in one padded batch vs in length-sorted micro-batches.

    .venv/bin/python bench/bench_zoo_step.py                  # the full build's three schedules
    .venv/bin/python bench/bench_zoo_step.py --steps 40       # more steps per measurement

For each schedule of `engine.zoo.build.BuildConfig` (base pretraining on 2 threads, as the build
gives it `workers × threads`; an expert and the joint model on 1 thread, as each runs in its own
worker) the same batches, drawn by the build's sampler, are stepped with micro_batches = 1, 2, 4
and the build's setting, in turn, round after round; medians per step are reported with their
ratio to one padded batch, and the share of a padded batch's tokens that are padding. A step is
forward + backward (`accumulate_loss`) + AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from engine.settings import ZOO_DIR  # noqa: E402
from engine.zoo.build import BuildConfig  # noqa: E402
from engine.zoo.corpus import build_corpus  # noqa: E402
from engine.zoo.train import accumulate_loss, example_sampler, make_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per setting (in rounds of 5)")
    args = parser.parse_args()
    config = BuildConfig()
    corpus = build_corpus(config.targets, config.seed, config.train_per_kind, config.dev_size, config.devtest_size)
    tokenizer = transformers.AutoTokenizer.from_pretrained(ZOO_DIR / "models" / "base")
    cases = [
        ("base pretraining", config.pretrain, config.directions(), 2),
        ("expert en-de", config.expert, [("en", "de")], 1),
        ("joint", config.joint, config.directions(), 1),
    ]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(
        "| schedule | threads | batch | padding in one padded batch | micro-batches | s / step (median) | vs one padded batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, schedule, directions, threads in cases:
        torch.set_num_threads(threads)
        draw = example_sampler(tokenizer, corpus, directions, schedule.translation_share, seed=1)
        settings = sorted({1, 2, 4, schedule.micro_batches})
        model = make_model(tokenizer, config.shape, seed=1).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = {m: [] for m in settings}
        tokens = padded = 0
        for round_index in range(args.steps // 5 + 1):
            batches = [[draw() for _ in range(schedule.batch_size)] for _ in range(5)]
            lengths = [[len(ids) for ids, _ in batch] for batch in batches]
            tokens += sum(map(sum, lengths))
            padded += sum(len(batch) * max(batch) for batch in lengths)
            for micro_batches in settings:
                for batch in batches:
                    start = time.perf_counter()
                    accumulate_loss(
                        model, batch, tokenizer.pad_token_id, config.shape.max_position_embeddings, micro_batches
                    )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if round_index:  # the first round warms up allocator and kernels
                        times[micro_batches].append(time.perf_counter() - start)
        baseline = statistics.median(times[1])
        for micro_batches in settings:
            median = statistics.median(times[micro_batches])
            chosen = " (the build's)" if micro_batches == schedule.micro_batches else ""
            print(
                f"| {name} | {threads} | {schedule.batch_size} | {1 - tokens / padded:.0%} | {micro_batches}{chosen} | "
                f"{median:.3f} | {median / baseline:.2f}× |"
            )


if __name__ == "__main__":
    main()
