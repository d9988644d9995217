"""Train-step throughput of the mini SmolLM2: linear vs parameter-matched Chebyshev-2 KAN.

    python benchmarks/train_step.py [--batch 16 --seq 128 --runs 10] [--out-md PATH]

The study's mini model (3 blocks of SmolLM2-135M's shape, vocabulary trimmed to 8,192 + 17
special tokens, AGNews classification head), one full optimiser step (forward, backward, AdamW)
jitted as in training, median of --runs warm steps with block_until_ready, in float32 and
bfloat16 compute; every row is measured in the same process and compared with the linear model
at the same precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base import get_config  # noqa: E402
from kanjax import sharding, train_lib  # noqa: E402
from kanjax.kan import count_params  # noqa: E402
from kanjax.kanify import build_model  # noqa: E402
from kanjax.llama import LlamaConfig, LlamaForSequenceClassification  # noqa: E402

ARMS = {"linear": None, "KAN chebyshev2 deg 2, param-matched": dict(targets=["all"], basis="chebyshev2", degree=2,
                                                                    param_match="width")}


def step_seconds(spec, precision: str, batch: dict, runs: int) -> tuple[float, int]:
    config = dataclasses.replace(LlamaConfig(), num_hidden_layers=3, vocab_size=8192 + 17, num_labels=4)
    dtype = train_lib.compute_dtype(precision)
    model = build_model(LlamaForSequenceClassification, config, spec, dtype=dtype)
    train = get_config().train
    train.update(dict(lr=1e-3, steps=1000, warmup=10, precision=precision))
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    trainer, state = train_lib.create_trainer(model, train, "classify", mesh)
    step = train_lib.jit_train_step(trainer, batch)
    batch = sharding.host_batch_to_global(batch, mesh)
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times), count_params(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, 8209, (args.batch, args.seq)).astype(np.int32),
             "attention_mask": np.ones((args.batch, args.seq), np.int32),
             "labels": rng.integers(0, 4, (args.batch,)).astype(np.int32)}
    tokens = args.batch * args.seq
    lines = [f"Mini SmolLM2 (3 blocks, vocab 8,209, classifier), one AdamW step on {args.batch} × {args.seq} "
             f"tokens, median of {args.runs} warm steps; jax {jax.__version__} on "
             f"{jax.devices()[0].device_kind} ({platform.machine()}, {jax.device_count()} device(s)).", "",
             "| model | precision | params | step ms | tokens/s | tokens/s ÷ linear |", "|---|---|---:|---:|---:|---:|"]
    for precision in ("fp32", "bf16"):
        base = None
        for name, spec in ARMS.items():
            seconds, params = step_seconds(spec, precision, batch, args.runs)
            base = base or seconds
            lines.append(f"| {name} | {precision} | {params:,} | {seconds * 1e3:.1f} | {tokens / seconds:,.0f} "
                         f"| {base / seconds:.2f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(f"# Train step: mini linear vs mini KAN\n\nCommand: `python benchmarks/train_step.py "
                    f"--batch {args.batch} --seq {args.seq} --runs {args.runs} --out-md {args.out_md}`\n\n{table}\n")


if __name__ == "__main__":
    main()
