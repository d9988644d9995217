"""Train-step throughput of the mini SmolLM2: linear vs parameter-matched Chebyshev-2 KAN vs transformers.

    python -m benchmarks.perf.train_step [--batch 16 --seq 128 --runs 10] [--out-md PATH] [--json PATH]

The study's mini model (3 blocks of SmolLM2-135M's shape, vocabulary trimmed to 8,192 + 17
special tokens, AGNews classification head), one full optimiser step (forward, backward, clipping
at global norm 1, AdamW) jitted as in training, in float32 and bfloat16 compute; beside it the same
model in transformers + PyTorch (LlamaForSequenceClassification, eager, float32, torch.optim.AdamW
with configs/base.py's betas, eps and weight decay (none on vectors, as kanjax), the lr of the
kanjax rows, clip_grad_norm_ 1.0; a step is zero_grad, forward, loss, backward, clip, step), and
dense `jnp.dot` products of --ref m k n as the machine's attainable matmul rate. Every arm is built
and run twice first, then timed round-robin (one step of each per round, --runs rounds) so load
from other processes hits them alike; median over rounds, ratios to arms of the same run. On CPU
PyTorch is timed at its default thread count and at each of --torch-threads (as model_forward.py).

GFLOP/s counts the matmul FLOPs each implementation executes (`step_flops`), so "÷ matmul" is the
share of the dense-matmul rate that the step reaches. On a GPU JAX's default float32 matmul is
TF32, so PyTorch is set to TF32 too (torch.set_float32_matmul_precision("high")).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
from importlib.metadata import version

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common.records import command_line, write_table
from benchmarks.common.timing import round_robin
from benchmarks.perf import step_profile
from benchmarks.perf.kan_layer import median_interval
from configs.base import get_config
from kanjax.kan import layer as kan
from kanjax.kan import matmul
from kanjax.kan.layer import KANLinear, count_params
from kanjax.llama import model as llama_model
from kanjax.llama.kanify import build_model
from kanjax.llama.model import LlamaConfig, LlamaForSequenceClassification, last_token_index, take_rows
from kanjax.training import sharding
from kanjax.training import step as train_lib

# The KAN arm is what the configs train (KANSpec's default: the basis kept for the backward pass); the
# ablation recomputes it in row chunks (kan.recompute=True, KANLinear's default): same rounds.
KAN = dict(targets=["all"], basis="chebyshev2", degree=2, param_match="width")
KAN_RECOMPUTED = {**KAN, "recompute": True}
# Where the KAN's cost sits: KAN projections in one group of the blocks, linear ones in the other.
KAN_MLP_ONLY = {**KAN, "targets": ["mlp"]}
KAN_ATTN_ONLY = {**KAN, "targets": ["attn"]}
ARMS = [("linear", None, "fp32"), ("KAN chebyshev2 deg 2, param-matched", KAN, "fp32"),
        ("linear", None, "bf16"), ("KAN chebyshev2 deg 2, param-matched", KAN, "bf16")]
TORCH = "transformers + PyTorch, linear"
LR = 1e-3  # configs/base.py's peak lr: PyTorch's constant rate, kanjax's warmup + cosine peak
PAD = 8208  # the padding id transformers pools with; the random inputs never contain it


def mini_config() -> LlamaConfig:
    return dataclasses.replace(LlamaConfig(), num_hidden_layers=3, vocab_size=8192 + 17, num_labels=4)


def step_flops(model, b: int, t: int, pooled_only: bool = True) -> float:
    """Matmul FLOPs of one training step of a sequence classifier: forward + backward = 3 × forward.

    Projections: a forward product of (rows, in) by (in, out) is 2·rows·in·out FLOPs, so each
    nnx.Linear costs 2·in·out per row and each KANLinear 2·in·K·out (its one (…, in·K) @ (in·K, out)
    contraction over K = degree + 1 basis columns; the basis evaluation, norms, softmax, embedding
    gather and the optimiser are elementwise and not counted). Rows: b·t, except that with
    `pooled_only` (kanjax's classifier) the last block's q, o and MLP run at the pooled row only
    (its k, v at every token) and the head at b rows; transformers runs everything at every token.
    Attention: QKᵀ and PV, 2·2·b·t_q·t·(heads·head_dim) per block over the full t × t square (not
    halved for the causal mask, the usual model-FLOPs convention). Embeddings carry no FLOPs.
    """
    cfg, last, forward = model.config, model.config.num_hidden_layers - 1, 0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, KANLinear):
            size = math.prod(node.coef.shape) + (math.prod(node.base_kernel.shape) if node.base else 0)
        elif isinstance(node, nnx.Linear):
            size = math.prod(node.kernel.shape)
        else:
            continue
        in_last = len(path) > 2 and path[1] == "layers" and path[2] == last
        pooled = "score" in path or (in_last and not {"k_proj", "v_proj"} & set(path))
        forward += 2 * size * (b if pooled and pooled_only else b * t)
    for i in range(cfg.num_hidden_layers):
        t_q = 1 if pooled_only and i == last else t
        forward += 2 * 2 * b * t_q * t * cfg.num_attention_heads * cfg.head_dim
    return 3.0 * forward


class EveryTokenClassifier(LlamaForSequenceClassification):
    """Ablation: the last block at every token, then the pooled row (kanjax's classifier skips that work)."""

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None):
        idx = last_token_index(input_ids, attention_mask, self.config.pad_token_id)
        hidden = self.model(input_ids, attention_mask, positions, segment_ids=segment_ids)
        return self.score(take_rows(hidden, idx[:, None])[:, 0]).astype(jnp.float32)


@contextlib.contextmanager
def plain_matmul():
    """Ablation: every projection through jax's own dot_general and its autodiff backward, without
    kanjax.matmul's custom VJP (patched while the model is built and its step traced)."""
    saved = matmul.dot_general, kan.dense
    matmul.dot_general = jax.lax.dot_general
    kan.dense = lambda x, w: jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
    try:
        yield
    finally:
        matmul.dot_general, kan.dense = saved


@contextlib.contextmanager
def expansion_per_projection():
    """Ablation: every KAN projection expands its input itself, instead of q, k, v (and gate, up) sharing
    one expansion and one matmul (`kanjax.llama.model.project_alike`)."""
    saved = llama_model.project_alike
    llama_model.project_alike = lambda projections, x: [p(x) for p in projections]
    try:
        yield
    finally:
        llama_model.project_alike = saved


# (label suffix, model class, build-and-trace context): each change of the step undone on its own
ABLATIONS = {"": (LlamaForSequenceClassification, contextlib.nullcontext),
             ", jax autodiff matmul": (LlamaForSequenceClassification, plain_matmul),
             ", last block at every token": (EveryTokenClassifier, contextlib.nullcontext),
             ", basis recomputed in backward": (LlamaForSequenceClassification, contextlib.nullcontext),
             ", expansion per projection": (LlamaForSequenceClassification, expansion_per_projection),
             ", MLP only": (LlamaForSequenceClassification, contextlib.nullcontext),
             ", attention only": (LlamaForSequenceClassification, contextlib.nullcontext)}


def kanjax_arm(spec, precision: str, batch: dict, ablation: str = "", want_hlo: bool = False):
    """(run one step, model, compiled HLO text of the step or None, planned peak bytes of the compiled
    step): the training step jitted as train.py jits it."""
    cls, context = ABLATIONS[ablation]
    with context():
        model = build_model(cls, mini_config(), spec, dtype=train_lib.compute_dtype(precision))
        train = get_config().train
        train.update(dict(lr=LR, steps=1000, warmup=10, precision=precision))
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        trainer, state = train_lib.create_trainer(model, train, "classify", mesh)
        step = train_lib.jit_train_step(trainer, batch)
        data = sharding.host_batch_to_global(batch, mesh)
        compiled = step.lower(state, data).compile()  # a second compilation, for its text and memory plan
        hlo = compiled.as_text() if want_hlo else None
        m = compiled.memory_analysis()
        peak = None if m is None else m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        box = [state]

        def run():
            box[0], metrics = step(box[0], data)
            jax.block_until_ready(metrics)
        run()  # traced here, inside the ablation's context
    return run, model, hlo, peak


def torch_arm(batch: dict, device: str):
    """(run one step, params): transformers' LlamaForSequenceClassification of the same shape."""
    import torch
    import transformers

    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as JAX's default float32 dot on GPU
    hf = {**mini_config().to_hf("LlamaForSequenceClassification"), "pad_token_id": PAD, "use_cache": False}
    model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**hf)).to(device).train()
    train = get_config().train
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=LR, betas=(train.b1, train.b2),
                            eps=train.eps)
    ids, mask, labels = (torch.as_tensor(batch[k], dtype=torch.long, device=device)
                         for k in ("input_ids", "attention_mask", "labels"))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    return run, sum(p.numel() for p in model.parameters())


def torch_device() -> str | None:
    """Where PyTorch runs next to JAX: the same kind of device, or None (row left out)."""
    try:
        import torch
    except ImportError:
        return None
    if jax.default_backend() == "cpu":
        return "cpu"
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else None


def matmul_arm(m: int, k: int, n: int, dtype):
    a = jax.random.normal(jax.random.key(0), (m, k), dtype)
    b = jax.random.normal(jax.random.key(1), (k, n), dtype)
    dot = jax.jit(jnp.dot)
    return lambda: jax.block_until_ready(dot(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ref", type=int, nargs=3, default=[2048, 576, 1536], metavar=("M", "K", "N"),
                        help="shape of the reference jnp.dot (m×k by k×n)")
    parser.add_argument("--torch-threads", type=int, nargs="*", default=[1],
                        help="CPU: PyTorch is timed at its default thread count and at each of these")
    parser.add_argument("--no-torch", action="store_true", help="leave the transformers rows out")
    parser.add_argument("--ablations", action="store_true",
                        help="also time fp32 arms with one of the step's optimisations undone (ABLATIONS)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, trace STEPS steps of each plain fp32 kanjax arm: time per op kind and pass")
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, PAD, (b, t)).astype(np.int32),
             "attention_mask": np.ones((b, t), np.int32),
             "labels": rng.integers(0, 4, (b,)).astype(np.int32)}
    fns, info = {}, {}  # name -> run one step; name -> (kind, label, precision, params, FLOPs per step)
    hlo = {}  # name -> compiled step text of the plain fp32 arms (--profile), else None
    peaks = {}  # name -> planned peak bytes of the compiled step (kanjax arms)
    arms = [(label, spec, precision, "") for label, spec, precision in ARMS]
    if args.ablations:
        arms += [("linear", None, "fp32", ", jax autodiff matmul"), ("KAN chebyshev2 deg 2, param-matched", KAN,
                  "fp32", ", jax autodiff matmul"), ("linear", None, "fp32", ", last block at every token"),
                 ("KAN chebyshev2 deg 2, param-matched", KAN_RECOMPUTED, "fp32",
                  ", basis recomputed in backward"),
                 ("KAN chebyshev2 deg 2, param-matched", KAN, "fp32", ", expansion per projection"),
                 ("KAN chebyshev2 deg 2, param-matched", KAN_MLP_ONLY, "fp32", ", MLP only"),
                 ("KAN chebyshev2 deg 2, param-matched", KAN_ATTN_ONLY, "fp32", ", attention only")]
    for label, spec, precision, ablation in arms:
        name = f"{label}{ablation} {precision}"
        profiled = args.profile > 0 and precision == "fp32" and not ablation  # the arms --profile traces
        run, model, hlo[name], peaks[name] = kanjax_arm(spec, precision, batch, ablation, want_hlo=profiled)
        fns[name] = run
        pooled = ABLATIONS[ablation][0] is not EveryTokenClassifier
        info[name] = ("kanjax", label + ablation, precision, count_params(model), step_flops(model, b, t, pooled))
        if spec is None and precision == "fp32" and not ablation:
            torch_flops = step_flops(model, b, t, pooled_only=False)
    device = None if args.no_torch else torch_device()
    if device:
        import torch

        run, params = torch_arm(batch, device)
        default = torch.get_num_threads()
        counts = [default] + [n for n in args.torch_threads if n != default] if device == "cpu" else [default]
        for n in counts:
            def run_with(n=n):
                torch.set_num_threads(n)
                run()
            label = f"{TORCH} ({device}{f', {n} thread(s)' if device == 'cpu' else ''})"
            fns[label], info[label] = run_with, ("torch", label, "fp32", params, torch_flops)
    m, k, n = args.ref
    for precision, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        label = f"dense matmul (jnp.dot) {m}×{k}×{n}"
        fns[f"{label} {precision}"] = matmul_arm(m, k, n, dtype)
        info[f"{label} {precision}"] = ("matmul", label, precision, None, 2.0 * m * k * n)
    load = [round(v, 1) for v in os.getloadavg()]
    times = round_robin(fns, args.runs)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    rate = {name: info[name][4] / med[name] for name in fns}
    best_torch = min((med[name] for name in fns if info[name][0] == "torch"), default=None)
    rows = []
    for name in fns:
        kind, label, precision, params, flops = info[name]
        model = kind != "matmul"
        rows.append({
            "name": label, "kind": kind, "precision": precision, "params": params, "step_ms": med[name] * 1e3,
            "min_ms": min(times[name]) * 1e3, "tokens_per_s": b * t / med[name] if model else None,
            "vs_linear": med[f"linear {precision}"] / med[name] if kind == "kanjax" else None,
            "vs_torch": best_torch / med[name] if model and best_torch else None, "gflop": flops / 1e9,
            "gflop_per_s": rate[name] / 1e9, "vs_matmul": rate[name] / rate[f"dense matmul (jnp.dot) {m}×{k}×{n} "
                                                                             f"{precision}"],
            "peak_mib": peaks[name] / 2**20 if peaks.get(name) else None,
            "ratios": (median_interval([lin / own for lin, own in zip(times[f"linear {precision}"], times[name])])
                       if kind == "kanjax" else None)})

    def cell(v, fmt):
        return "–" if v is None else format(v, fmt)
    lines = [f"Mini SmolLM2 (3 blocks, vocab 8,209, classifier), one AdamW step on {b} × {t} tokens, "
             f"{args.runs} round-robin rounds (median); jax {jax.__version__} on {jax.devices()[0].device_kind} "
             f"({platform.machine()}, {jax.device_count()} device(s), {os.cpu_count()} CPU cores); 1-min load "
             f"average before the timed rounds: {load[0]}.", "",
             "| model | precision | params | step ms | min ms | tokens/s | ÷ linear | ÷ linear per round (95%) "
             "| ÷ torch | GFLOP/step | GFLOP/s | ÷ matmul | planned peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per_round = "–" if r["ratios"] is None else f"{r['ratios'][0]:.2f} ({r['ratios'][1]:.2f}–{r['ratios'][2]:.2f})"
        lines.append(f"| {r['name']} | {r['precision']} | {cell(r['params'], ',')} | {r['step_ms']:.1f} "
                     f"| {r['min_ms']:.1f} | {cell(r['tokens_per_s'], ',.0f')} | {cell(r['vs_linear'], '.2f')} "
                     f"| {per_round} | {cell(r['vs_torch'], '.2f')} | {r['gflop']:.2f} | {r['gflop_per_s']:,.1f} "
                     f"| {r['vs_matmul']:.2f} | {cell(r['peak_mib'], ',.1f')} |")
    lines += ["", "÷ linear: tokens/s against the kanjax linear model at the same precision (ratio of medians); "
              "÷ linear per round: linear's step time ÷ this arm's in the same round, median over rounds and the "
              "95% interval of that median (order statistics); planned peak: arguments + outputs + temporaries of "
              "the compiled step (XLA's memory analysis, deterministic); ÷ torch: against the "
              "fastest transformers row (float32); ÷ matmul: GFLOP/s against the dense jnp.dot of the same precision. "
              "GFLOP/step: matmul FLOPs executed (forward + backward, `step_flops`): kanjax runs its last block "
              "at the pooled token only, transformers at every token (its count is the larger). "
              + (f"PyTorch {version('torch')}, transformers {version('transformers')}, eager, on {device}"
                 + (" (on a loaded CPU OpenMP's spinning barriers can make more threads slower)."
                    if device == "cpu" else ", TF32 matmuls.") if device
                 else "No transformers row (--no-torch, no torch, or torch cannot reach JAX's device).")]
    if args.ablations:
        lines += ["", "What each change of the kanjax step buys: an ablation row undoes one, all else equal, timed in the "
                  "same rounds. *jax autodiff matmul*: every projection through `jax.lax.dot_general` and JAX's own "
                  "backward instead of `kanjax.matmul.dense` (whose weight gradient skips XLA:CPU's transposed copies "
                  "of the activations); *last block at every token*: the classifier's last block at every position "
                  "(its GFLOP/step counts that work) instead of at the pooled token only; *basis recomputed in "
                  "backward*: `kan.recompute=True` (KANLinear's default) recomputes every KAN layer's basis expansion "
                  "in row chunks in the backward pass instead of keeping it (`kan.recompute=False`, the configs' "
                  "default and the KAN rows above): less activation memory for more elementwise work; *expansion "
                  "per projection*: every KAN projection expands its input itself, instead of q, k, v (and gate, "
                  "up), which read one input, sharing one basis expansion and one matmul "
                  "(`kanjax.llama.model.project_alike`). The row's "
                  "÷ linear against the plain arm's is what the change buys (or costs). *MLP only* / *attention "
                  "only*: KAN projections (param-matched) in that part of every block, linear ones in the other: "
                  "where the KAN's cost against linear sits."]
    profiles = {}
    if args.profile:
        profiles = {info[name][1]: step_profile.profile(fns[name], hlo[name], args.profile)
                    for name, (_, _, precision, ablation) in zip(fns, arms) if precision == "fp32" and not ablation}
        lines += ["", f"### Profile: XLA op time per step ({args.profile} traced steps, `benchmarks/perf/step_profile.py`)",
                  "", step_profile.table(profiles), "",
                  "Op kinds: what each compiled instruction (a fusion: its fused computation) contains, by priority "
                  "matmul > scatter > gather > reduction > layout copy (copies, transposes only) > elementwise. Pass: "
                  "from JAX's op_name metadata (jvp = forward, transpose(jvp) = backward; the rest is AdamW, "
                  "clipping and norms). Op times are summed, so ops that overlap on the two threads both count; "
                  "the share is of that sum. Dots that XLA:CPU hands to Eigen (the weight gradients) are "
                  "under-counted: their trace event ends before the work on Eigen's threads does."]
    table = "\n".join(lines)
    print(table)
    command = command_line("benchmarks.perf.train_step")
    write_table(args.out_md, "Train step: mini linear vs mini KAN vs transformers", command, table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "batch": b, "seq": t, "runs": args.runs, "jax": jax.__version__,
                       "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                       "torch_device": device, "load_before": load, "rows": rows, "times_s": times,
                       "profile_s": {arm: [{"kind": k, "pass": p, "seconds": v} for (k, p), v in prof.items()]
                                     for arm, prof in profiles.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
