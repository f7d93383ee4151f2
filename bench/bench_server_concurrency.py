"""Why four dashboard sessions scale poorly on two cores: the GIL, measured on the zoo's models.

The dashboard runs every session's translations and captures in one server process, each job
on one torch thread. For models as small as the zoo's, greedy generation is mostly Python work
between tiny kernels, so threads of one process barely overlap. This times the same work (each
of two En→X experts translating the first N devtest sentences twice) three ways: one after the
other, in two threads of one process, and in two processes started at the same moment.

    .venv/bin/python bench/bench_server_concurrency.py [--n 64] [--batch-size 16]

--batch-size defaults to the dashboard's (engine.pipeline.scores.DASHBOARD_BATCH_SIZE).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.pipeline.scores import DASHBOARD_BATCH_SIZE  # noqa: E402

EXPERTS = ("expert-en-de", "expert-en-bn")


def load(name: str):
    import torch
    import transformers

    torch.set_num_threads(1)  # what the dashboard gives each job on 2 cores
    folder = REPO / "zoo" / "models" / name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(folder)


def translate_twice(model, tokenizer, direction: str, n: int, batch_size: int) -> None:
    from engine.parallel import load_jsonl
    from engine.translate.generate import DecodingSettings, generate_translations

    pairs = load_jsonl(REPO / "zoo" / "data" / "devtest" / f"{direction}.jsonl").head(n)
    for _ in range(2):
        generate_translations(
            model,
            tokenizer,
            pairs.sources,
            pairs.src_lang,
            pairs.tgt_lang,
            DecodingSettings(batch_size=batch_size),
            device="cpu",
        )


def process_job(name: str, n: int, batch_size: int, start_at: float) -> tuple[float, float]:
    """Load and warm up, wait for the common start, then work; (start, end) wall-clock times."""
    model, tokenizer = load(name)
    direction = name.removeprefix("expert-")
    translate_twice(model, tokenizer, direction, 4, batch_size)
    while time.time() < start_at:
        time.sleep(0.005)
    start = time.time()
    translate_twice(model, tokenizer, direction, n, batch_size)
    return start, time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="devtest sentences per expert")
    parser.add_argument("--batch-size", type=int, default=DASHBOARD_BATCH_SIZE, help="sentences per generate() call")
    args = parser.parse_args()

    loaded = {name: load(name) for name in EXPERTS}
    jobs = [
        (model, tokenizer, name.removeprefix("expert-"), args.n, args.batch_size)
        for name, (model, tokenizer) in loaded.items()
    ]
    for model, tokenizer, direction, _, _ in jobs:
        translate_twice(model, tokenizer, direction, 4, args.batch_size)  # warm-up

    start = time.perf_counter()
    for job in jobs:
        translate_twice(*job)
    serial = time.perf_counter() - start

    threads = [threading.Thread(target=translate_twice, args=job) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    threaded = time.perf_counter() - start

    with ProcessPoolExecutor(len(EXPERTS), mp_context=multiprocessing.get_context("spawn")) as pool:
        start_at = time.time() + 30  # after both have loaded and warmed up
        spans = list(
            pool.map(
                process_job,
                EXPERTS,
                [args.n] * len(EXPERTS),
                [args.batch_size] * len(EXPERTS),
                [start_at] * len(EXPERTS),
            )
        )
    processes = max(end for _, end in spans) - min(begin for begin, _ in spans)

    print(f"{len(EXPERTS)} experts x {args.n} sentences x 2, batches of {args.batch_size}, one torch thread per job:")
    print(f"  one after the other : {serial:.2f} s")
    print(f"  two threads         : {threaded:.2f} s  ({serial / threaded:.2f}x)")
    print(f"  two processes       : {processes:.2f} s  ({serial / processes:.2f}x)")


if __name__ == "__main__":
    main()
