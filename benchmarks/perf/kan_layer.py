"""KANLinear speed and memory at the SmolLM2 MLP shape, against nnx.Linear in the same process.

    python -m benchmarks.perf.kan_layer [--tokens 1024 --in 576 --out 1536 --runs 10] [--out-md PATH]
        [--repeats 30 --inner 5 --json benchmarks/results/perf/kan_layer.json]

For every basis family: median forward and forward+backward time (warm jit, block_until_ready),
and the peak memory XLA plans for the compiled step (arguments + outputs + temporaries), at the
same output width as the linear layer and at the parameter-matched width (`matched_width`).
Ratios are to `nnx.Linear(in, out)` measured in the same run. When the optional `jaxkan` package
is importable its Chebyshev layer is timed at the same shape too.

Then the AGNews study's layers (`study_layers`: every arm of benchmarks/studies/agnews/plan.py that changes
only the basis or the degree, built from its configs/ file, at its param-matched MLP width, no bias)
against Chebyshev-2 degree 2, for benchmarks/studies/agnews/report.py: --repeats rounds, each timing one
forward+backward (the mean of --inner calls) of every layer round-robin; each layer's time ÷
Chebyshev-2's in the same round; the median ratio over rounds with a distribution-free 95% interval
(order statistics of the median, `median_interval`). --json writes them as
{"ratios_to_chebyshev2": {layer: {"ratio", "lo", "hi", ...}}}, layer = the arm's name without "kan_";
a polynomial family's entry adds "vs_same_degree", its ratio to Chebyshev-2 of its own degree.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.studies.agnews import plan as agnews_plan  # the study's arm list
from kanjax.kan import basis as basis_lib
from kanjax.kan.layer import KANLinear, count_params, matched_width
from kanjax.llama.kan_spec import KANSpec


def median_seconds(fn, *args, runs: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def planned_peak_bytes(fn, *args) -> int:
    analysis = fn.lower(*args).compile().memory_analysis()
    if analysis is None:
        return -1
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes)


def fwd_bwd_fn(module: nnx.Module):
    """(jitted forward+backward of sum(module(x)) w.r.t. parameters and x, its parameters)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    @jax.jit
    def forward_backward(params, x):
        def loss(params, x):
            return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1))(params, x)
    return forward_backward, params


def measure(module: nnx.Module, x: jax.Array, runs: int) -> dict:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)  # rest: e.g. RNG state of other layers

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    forward_backward, _ = fwd_bwd_fn(module)
    return {
        "params": count_params(module),
        "fwd": median_seconds(forward, params, x, runs=runs),
        "fwd_bwd": median_seconds(forward_backward, params, x, runs=runs),
        "peak": planned_peak_bytes(forward_backward, params, x),
    }


def study_layers(n_in: int, n_out: int) -> dict:
    """{name: (KANLinear kwargs, width)}: the study arms (agnews_plan.STUDY) that differ from
    Chebyshev-2 degree 2 only in basis or degree, as their configs/ files build the MLP's gate
    projection: param-matched width, no bias (Llama MLPs have none)."""
    out = {}
    for arm in agnews_plan.STUDY:
        if not arm.name.startswith("kan_") or set(arm.overrides) - {"kan.degree"}:
            continue
        kan = importlib.import_module(f"configs.{arm.config}").get_config().kan.to_dict()
        spec = KANSpec.from_dict({**kan, "degree": arm.overrides.get("kan.degree", kan["degree"])})
        if spec.strategy != "replace" or spec.mlp_activation != "silu" or spec.param_ratio != 1:
            continue
        kw = spec.kan_kwargs()
        out[arm.name[len("kan_"):]] = (kw, matched_width(n_in, n_out, use_bias=False, **kw))
    return out


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi): lo, hi = the order statistics x_(l), x_(n+1-l) with the largest l such that
    P(Binomial(n, 1/2) <= l - 1) <= (1 - level) / 2, which cover the median with probability
    >= level whatever the distribution (n >= 6 for 95%; below that, min and max)."""
    x, n = sorted(values), len(values)
    low, cdf = 1, 0.0
    for j in range((n + 1) // 2):
        cdf += math.comb(n, j) / 2 ** n
        if cdf > (1 - level) / 2:
            break
        low = j + 1
    return statistics.median(x), x[low - 1], x[n - low]


def study_ratios(n_in: int, n_out: int, x: jax.Array, repeats: int, inner: int) -> dict:
    """{name: {"ratio", "lo", "hi", "ms", "width", "params", "kan"}}: forward+backward time ÷
    Chebyshev-2 degree 2 in the same round, over `repeats` round-robin rounds ("linear" included)."""
    fns = {"linear": (*fwd_bwd_fn(nnx.Linear(n_in, n_out, use_bias=False, rngs=nnx.Rngs(0))), n_out, {})}
    for name, (kw, width) in study_layers(n_in, n_out).items():
        fns[name] = (*fwd_bwd_fn(KANLinear(n_in, width, use_bias=False, rngs=nnx.Rngs(0), **kw)), width, kw)
    for fn, params, _, _ in fns.values():
        jax.block_until_ready(fn(params, x))
        jax.block_until_ready(fn(params, x))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, params, _, _) in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                out = fn(params, x)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / inner)
    result = {}
    for name, (_, params, width, kw) in fns.items():
        ratio, lo, hi = median_interval([a / c for a, c in zip(times[name], times["chebyshev2"])])
        result[name] = {"ratio": ratio, "lo": lo, "hi": hi, "ms": statistics.median(times[name]) * 1e3,
                        "width": width, "params": sum(int(p.size) for p in jax.tree.leaves(params)),
                        "kan": kw}
        ref = same_degree_reference(name, kw, fns)
        if ref is not None:  # the families are compared with Chebyshev-2 at their own degree
            r, lo, hi = median_interval([a / c for a, c in zip(times[name], times[ref])])
            result[name]["vs_same_degree"] = {"reference": ref, "ratio": r, "lo": lo, "hi": hi}
    return result


def same_degree_reference(name: str, kw: dict, layers: dict) -> str | None:
    """The Chebyshev-2 layer timed alongside with the same polynomial degree as `name`'s (Fibonacci's
    F_d has degree d − 1), or None (no degree, Chebyshev-2 itself, or no such layer)."""
    if "degree" not in kw or kw["basis"] == "chebyshev2" or not basis_lib.BASES[kw["basis"]].polynomial:
        return None
    degree = kw["degree"] - (kw["basis"] == "fibonacci")
    ref = "chebyshev2" if degree == 2 else f"chebyshev2_deg{degree}"
    return ref if ref in layers else None


def basis_dtype_rows(n_in: int, width: int, x: jax.Array, runs: int) -> list[str]:
    """Why the basis is evaluated in float32: time and error of bfloat16/float16 compute with the
    basis in float32 vs in the compute dtype (chebyshev2 and degree-8 hermite, param-matched)."""
    lines = ["", "Basis evaluation dtype (param-matched layer, error relative to float32 compute, norm-wise):", "",
             "| basis | compute | basis dtype | fwd ms | rel. error |", "|---|---|---|---:|---:|"]
    for family, degree in (("chebyshev2", 2), ("hermite", 8)):
        ref = KANLinear(n_in, width, basis=family, degree=degree, rngs=nnx.Rngs(0))(x)
        for compute in (jnp.bfloat16, jnp.float16):
            for bdtype in (jnp.float32, compute):
                layer = KANLinear(n_in, width, basis=family, degree=degree, dtype=compute, basis_dtype=bdtype,
                                  rngs=nnx.Rngs(0))
                graphdef, params = nnx.split(layer)
                fwd = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
                y = fwd(params, x.astype(compute)).astype(jnp.float32)
                err = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
                ms = median_seconds(fwd, params, x.astype(compute), runs=runs) * 1e3
                lines.append(f"| {family} deg {degree} | {jnp.dtype(compute).name} | {jnp.dtype(bdtype).name} "
                             f"| {ms:.2f} | {err:.2e} |")
    return lines


def jaxkan_layer(n_in: int, n_out: int):
    """The optional jaxkan package's Chebyshev layer, or None when it is not installed."""
    try:
        from jaxkan.layers import get_layer  # type: ignore
    except ImportError:
        return None
    try:
        return get_layer("chebyshev")(n_in=n_in, n_out=n_out, D=2, seed=0)
    except Exception as err:  # its API moves between releases; report, don't crash the table
        print(f"jaxkan present but its Chebyshev layer could not be built: {err}")
        return None


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--in", dest="n_in", type=int, default=576)
    parser.add_argument("--out", dest="n_out", type=int, default=1536)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--families", nargs="*", default=sorted(basis_lib.BASES))
    parser.add_argument("--repeats", type=int, default=30, help="round-robin rounds of the study layers (0: skip)")
    parser.add_argument("--inner", type=int, default=5, help="calls per timing in those rounds")
    parser.add_argument("--out-md", default=None, help="also write the table to this file")
    parser.add_argument("--json", default=None, help="write the study layers' ratios to this file")
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(0), (args.tokens, args.n_in), jnp.float32)
    rows = []
    linear = measure(nnx.Linear(args.n_in, args.n_out, rngs=nnx.Rngs(0)), x, args.runs)
    rows.append(("nnx.Linear", "-", args.n_out, linear))
    for family in args.families:
        width = matched_width(args.n_in, args.n_out, basis=family)
        for label, n_out in (("same width", args.n_out), ("param-matched", width)):
            layer = KANLinear(args.n_in, n_out, basis=family, rngs=nnx.Rngs(0))
            rows.append((family, label, n_out, measure(layer, x, args.runs)))
            print(f"  measured {family} {label}", flush=True)
    jk = jaxkan_layer(args.n_in, args.n_out)
    if jk is not None:
        rows.append(("jaxkan chebyshev", "same width", args.n_out, measure(jk, x, args.runs)))

    lines = [
        f"KANLinear at {args.tokens} tokens × {args.n_in} → {args.n_out}, float32, default degree "
        f"(2 for polynomials), domain tanh; median of {args.runs} warm runs; "
        f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({platform.processor() or platform.machine()}, {jax.local_device_count()} device(s)).",
        "",
        "| layer | width | out | params | params / linear | fwd ms | fwd ×linear | fwd+bwd ms "
        "| fwd+bwd ×linear | planned peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, n_out, m in rows:
        lines.append(
            f"| {name} | {label} | {n_out} | {m['params']:,} | {m['params'] / linear['params']:.3f} "
            f"| {m['fwd'] * 1e3:.2f} | {m['fwd'] / linear['fwd']:.2f} | {m['fwd_bwd'] * 1e3:.2f} "
            f"| {m['fwd_bwd'] / linear['fwd_bwd']:.2f} | {m['peak'] / 2**20:.1f} |")
    if jk is None:
        lines += ["", "jaxkan is not installed: its row is absent (pip install jaxkan to add it)."]
    else:
        lines += ["", "jaxkan row: `jaxkan.layers.get_layer('chebyshev')(n_in, n_out, D=2)` (jaxkan "
                  f"{_version('jaxkan')}), its own default init and residual branch."]
    lines += basis_dtype_rows(args.n_in, matched_width(args.n_in, args.n_out, basis="chebyshev2"), x, args.runs)
    load = [round(v, 1) for v in os.getloadavg()]
    study = study_ratios(args.n_in, args.n_out, x, args.repeats, args.inner) if args.repeats > 0 else {}
    if study:
        lines += ["", f"The AGNews study's layers ({args.n_in} → param-matched width, no bias, configs/ settings), "
                  f"forward+backward time ÷ Chebyshev-2 degree 2 in the same round: median of {args.repeats} "
                  f"round-robin rounds (each the mean of {args.inner} calls), 95% interval of the median from order "
                  f"statistics; 1-min load average before: {load[0]}. Written to kan_layer.json for agnews_report.py.",
                  "", "| layer | width | params | fwd+bwd ms | × chebyshev2 | 95% interval "
                  "| × chebyshev2 of the same degree (95% interval) |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for name, r in sorted(study.items(), key=lambda item: item[1]["ratio"]):
            same = r.get("vs_same_degree")
            same = f"{same['ratio']:.2f} ({same['lo']:.2f}–{same['hi']:.2f})" if same else "–"
            lines.append(f"| {name} | {r['width']} | {r['params']:,} | {r['ms']:.2f} | {r['ratio']:.2f} "
                         f"| {r['lo']:.2f}–{r['hi']:.2f} | {same} |")
    table = "\n".join(lines)
    print(table)
    command = " ".join(["python -m benchmarks.perf.kan_layer"] + sys.argv[1:])
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(f"# KANLinear layer benchmark\n\nCommand: `{command}`\n\n{table}\n")
    if args.json:
        if not study:
            raise SystemExit("--json needs --repeats > 0")
        with open(args.json, "w") as f:
            json.dump({"command": command, "tokens": args.tokens, "in": args.n_in, "out": args.n_out,
                       "repeats": args.repeats, "inner": args.inner, "jax": jax.__version__,
                       "device": jax.devices()[0].device_kind, "load_before": load,
                       "interval": "95%, order statistics of the median over rounds",
                       "linear_to_chebyshev2": study.pop("linear"), "ratios_to_chebyshev2": study}, f, indent=1)


if __name__ == "__main__":
    main()
