"""Benchmark: capture (hooks, pooling, gate counts) vs a plain forward pass of the same batches.

    .venv/bin/python bench/bench_capture.py                                   # zoo-like tiny Qwen2
    .venv/bin/python bench/bench_capture.py --hidden 512 --mlp 2048 --layers 12 --n 128

Both sides run the decoder (capture never needs the LM head's logits) on identical padded
batches; "capture" also includes its own batching and the copy of pooled states to the CPU.
Timings alternate plain / capture over several rounds; medians are reported. Tokenisation and
span masks are prepared once beforehand and are not part of either side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from engine.activations import capture as capture_api  # noqa: E402
from engine.activations.capture import CaptureSettings, _batches, _Recorder, capture_hooks, make_batch, model_blocks  # noqa: E402
from engine.activations.spans import encode_pairs  # noqa: E402
from engine.parallel import ParallelSet  # noqa: E402
from tests.tiny_models import make_model, make_tokenizer  # noqa: E402

WORDS = "one two three four five six seven eight nine ten twenty thirty forty hundred thousand".split()


def sentences(n: int, seed: int) -> ParallelSet:
    g = torch.Generator().manual_seed(seed)

    def sentence():
        k = int(torch.randint(3, 12, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return ParallelSet("en", "de", tuple(sentence() for _ in range(n)), tuple(sentence() for _ in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--mlp", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )

    tokenizer = make_tokenizer()
    model = make_model(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).to(device)
    pairs = sentences(args.n, seed=0)
    encoded = encode_pairs(tokenizer, pairs)
    settings = CaptureSettings(batch_size=args.batch_size)
    batches = [
        make_batch([encoded[i] for i in index], settings.spans, tokenizer.pad_token_id, device)
        for index in _batches(encoded, settings.batch_size)
    ]
    tokens = sum(int(ids.numel()) for ids, _, _ in batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    blocks = model_blocks(model)

    def plain():
        for ids, attention, _ in batches:
            model.model(input_ids=ids, attention_mask=attention, use_cache=False)
        sync()

    def captured():
        recorder = _Recorder(len(settings.spans), len(blocks.layers), blocks.d_mlp, device)
        with capture_hooks(model, recorder, blocks):
            for ids, attention, masks in batches:
                recorder.set_batch(masks)
                model.model(input_ids=ids, attention_mask=attention, use_cache=False)
                torch.stack(recorder.pooled).cpu()
            recorder.active.cpu()
        sync()

    times = {"plain": [], "capture": []}
    cpu = {"plain": [], "capture": []}  # CPU seconds of this process: steadier than wall time on a shared machine
    with torch.inference_mode():
        plain(), captured()  # warm-up
        for _ in range(args.rounds):
            for name, fn in (("plain", plain), ("capture", captured)):
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    start = time.perf_counter()
    capture_api(model, tokenizer, pairs, settings, device=device)
    end_to_end = time.perf_counter() - start

    p, c = statistics.median(times["plain"]), statistics.median(times["capture"])
    print(
        f"device {device}, torch threads {torch.get_num_threads()}; Qwen2 hidden {args.hidden}, MLP {args.mlp}, "
        f"{args.layers} blocks; {args.n} pairs in {len(batches)} batches of {args.batch_size}, {tokens} padded tokens"
    )
    print(f"plain decoder forward: {p * 1000:.0f} ms (median of {args.rounds})")
    print(f"capture forward:       {c * 1000:.0f} ms (median of {args.rounds})")
    print(f"overhead: {100 * (c - p) / p:+.1f}% wall")
    pc, cc = statistics.median(cpu["plain"]), statistics.median(cpu["capture"])
    print(f"CPU time: plain {pc * 1000:.0f} ms, capture {cc * 1000:.0f} ms, overhead {100 * (cc - pc) / pc:+.1f}%")
    print(f"capture() end to end incl. chat rendering + tokenisation: {end_to_end * 1000:.0f} ms")


if __name__ == "__main__":
    main()
