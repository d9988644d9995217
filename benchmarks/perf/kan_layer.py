"""KANLinear speed and memory at the SmolLM2 MLP shape, against nnx.Linear and jaxKAN in the same process.

    python -m benchmarks.perf.kan_layer [--tokens 1024 --in 576 --out 1536 --runs 7] [--out-md PATH]
        [--families ...] [--repeats 30 --inner 5 --json benchmarks/results/perf/kan_layer.json]
        [--study-from benchmarks/results/perf/kan_layer.json]

For every basis family, at the same output width as the linear layer and at the parameter-matched
width (`matched_width`), each with the basis recomputed in the backward pass (`recompute=True`, the
default: only the input kept, row chunks) and with autodiff's plain residuals (`recompute=False`):
forward and forward+backward time and the peak memory XLA plans for the compiled forward+backward
(arguments + outputs + temporaries; deterministic, so it needs no quiet machine). Times: every
layer's jitted forward and forward+backward run once per round, round-robin, --runs rounds (warm
jit, block_until_ready); each time ÷ nnx.Linear's in the same round; the median ratio over rounds
with its distribution-free 95% interval (`median_interval`, order statistics of the median).

jaxKAN (`jaxkan`, pinned in requirements-dev.txt; rows absent when it is not importable): its
Chebyshev layer (degree 2, no residual: the same function class as our Chebyshev row) and its
B-spline layer (efficient-KAN's, grid 5, order 3, SiLU residual and per-edge scales: its defaults),
each at the linear layer's width and at the parameter count of our parameter-matched layer of the
same family. A second table pairs ours with jaxKAN's at equal parameter counts: time ratio per
round, median and interval.

Then the AGNews study's layers (`study_layers`: every arm of benchmarks/studies/agnews/plan.py that changes
only the basis or the degree, built from its configs/ file, at its param-matched MLP width, no bias)
against Chebyshev-2 degree 2, for benchmarks/studies/agnews/report.py: --repeats rounds, each timing one
forward+backward (the mean of --inner calls) of every layer round-robin; each layer's time ÷
Chebyshev-2's in the same round; the median ratio over rounds with a distribution-free 95% interval.
--json writes them as {"ratios_to_chebyshev2": {layer: {"ratio", "lo", "hi", ...}}}, layer = the
arm's name without "kan_"; a polynomial family's entry adds "vs_same_degree", its ratio to
Chebyshev-2 of its own degree. With --repeats 0, --study-from JSON renders that section from an
earlier run's file instead (the study's claims rest on it; it says which command measured it).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.common.records import command_line, write_table
from benchmarks.common.timing import round_robin
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


def forward_fn(module: nnx.Module):
    """(jitted forward of module, its parameters)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)  # rest: e.g. RNG state of other layers

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params, rest)(x)
    return forward, params


def measure(module: nnx.Module, x: jax.Array, runs: int) -> dict:
    """One layer alone: parameters, median forward and forward+backward seconds, planned peak bytes."""
    forward, params = forward_fn(module)
    forward_backward, _ = fwd_bwd_fn(module)
    return {
        "params": count_params(module),
        "fwd": median_seconds(forward, params, x, runs=runs),
        "fwd_bwd": median_seconds(forward_backward, params, x, runs=runs),
        "peak": planned_peak_bytes(forward_backward, params, x),
    }


def measure_round_robin(modules: dict, x: jax.Array, runs: int, reference: str) -> dict:
    """{name: {"params", "peak", "fwd", "fwd_bwd", "fwd_ratio": (median, lo, hi), "fwd_bwd_ratio": …}}:
    every module's forward and forward+backward timed once per round, round-robin, `runs` rounds
    (after two warm-up calls each); seconds are medians over rounds, ratios are to `reference`'s
    time in the same round (median and 95% interval over rounds)."""
    fns, out = {}, {}
    for name, module in modules.items():
        forward, params = forward_fn(module)
        forward_backward, _ = fwd_bwd_fn(module)
        fns[(name, "fwd")] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)), forward, params)
        fns[(name, "fwd_bwd")] = functools.partial(lambda f, p: jax.block_until_ready(f(p, x)),
                                                   forward_backward, params)
        out[name] = {"params": count_params(module), "peak": planned_peak_bytes(forward_backward, params, x)}
        print(f"  built {name}", flush=True)
    times = round_robin(fns, runs)
    for name in modules:
        for kind in ("fwd", "fwd_bwd"):
            ts, ref = times[(name, kind)], times[(reference, kind)]
            out[name][kind] = statistics.median(ts)
            out[name][f"{kind}_ratio"] = median_interval([a / b for a, b in zip(ts, ref)])
    return out, times


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


JAXKAN_LAYERS = {  # our family -> (jaxkan layer type, its keyword arguments)
    "chebyshev": ("chebyshev", {"D": 2}),  # T_1, T_2 after tanh (its bias replaces T_0), no residual
    "bspline": ("spline", {"k": 3, "G": 5}),  # efficient-KAN's layer: + SiLU residual, per-edge scale
}


def jaxkan_layer(kind: str, n_in: int, n_out: int):
    """jaxkan's layer for our family `kind` (JAXKAN_LAYERS), or None when jaxkan is not installed."""
    try:
        from jaxkan.layers import get_layer  # type: ignore
    except ImportError:
        return None
    name, kw = JAXKAN_LAYERS[kind]
    return get_layer(name)(n_in=n_in, n_out=n_out, seed=0, **kw)


def jaxkan_matched_width(kind: str, n_in: int, params: int) -> int:
    """Width at which jaxkan's layer for `kind` has `params` parameters (its count is affine in the width)."""
    at1, at2 = (count_params(nnx.eval_shape(lambda n=n: jaxkan_layer(kind, n_in, n))) for n in (1, 2))
    return max(1, round((params - (2 * at1 - at2)) / (at2 - at1)))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def layer_rows(n_in: int, n_out: int, families: list[str]) -> dict:
    """{row name: (module, family, width label, recompute label)}: nnx.Linear, every family at the same
    width and param-matched, with and without recomputation, and jaxKAN's layers when installed."""
    rows = {"nnx.Linear": (nnx.Linear(n_in, n_out, rngs=nnx.Rngs(0)), "nnx.Linear", "-", "-")}
    for family in families:
        width = matched_width(n_in, n_out, basis=family)
        for label, w in (("same width", n_out), ("param-matched", width)):
            for recompute in (True, False):
                name = f"{family} {label} {'recompute' if recompute else 'plain'}"
                rows[name] = (KANLinear(n_in, w, basis=family, recompute=recompute, rngs=nnx.Rngs(0)), family, label,
                              "recomputed" if recompute else "kept")
    for kind in JAXKAN_LAYERS:
        if jaxkan_layer(kind, n_in, 1) is None:
            break
        ours = count_params(nnx.eval_shape(lambda: KANLinear(n_in, matched_width(n_in, n_out, basis=kind),
                                                             basis=kind, rngs=nnx.Rngs(0))))
        for label, w in (("same width", n_out), ("param-matched", jaxkan_matched_width(kind, n_in, ours))):
            rows[f"jaxkan {JAXKAN_LAYERS[kind][0]} {label}"] = (jaxkan_layer(kind, n_in, w),
                                                               f"jaxkan {JAXKAN_LAYERS[kind][0]}", label, "kept")
    return rows


def _ratio(r: tuple) -> str:
    return f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def layer_table(rows: dict, m: dict) -> list[str]:
    """The main table: one line per layer (`layer_rows`), measurements `m` from `measure_round_robin`."""
    lin = m["nnx.Linear"]
    lines = ["| layer | width | basis for backward | out | params | params / linear | fwd ms | fwd ×linear (95%) "
             "| fwd+bwd ms | fwd+bwd ×linear (95%) | planned peak MiB | peak ×linear |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (module, family, label, kept) in rows.items():
        r = m[name]
        out = getattr(module, "out_features", None) or getattr(module, "n_out")
        lines.append(f"| {family} | {label} | {kept} | {out} | {r['params']:,} | {r['params'] / lin['params']:.3f} "
                     f"| {r['fwd'] * 1e3:.2f} | {_ratio(r['fwd_ratio'])} | {r['fwd_bwd'] * 1e3:.2f} "
                     f"| {_ratio(r['fwd_bwd_ratio'])} | {r['peak'] / 2**20:.1f} | {r['peak'] / lin['peak']:.2f} |")
    return lines


def jaxkan_pairs(rows: dict) -> list[tuple[str, str]]:
    """(ours, jaxkan's) row names at equal or nearest parameter counts, for the per-parameter table."""
    pairs = []
    for kind, (jk, _) in JAXKAN_LAYERS.items():
        ours = [kind] + (["chebyshev2"] if kind == "chebyshev" else [])  # first kind, and our default
        for label in ("same width", "param-matched"):
            pairs += [(f"{family} {label} recompute", f"jaxkan {jk} {label}") for family in ours
                      if f"jaxkan {jk} {label}" in rows and f"{family} {label} recompute" in rows]
    return pairs


def jaxkan_table(rows: dict, m: dict, times: dict) -> list[str]:
    """Ours against jaxKAN, pair by pair (`jaxkan_pairs`): µs per million parameters and our time ÷ theirs
    in the same round (median, 95% interval), forward and forward+backward, and planned peaks."""
    lines = ["| ours | jaxKAN | params ours / theirs | fwd ours ÷ theirs (95%) | fwd+bwd ours ÷ theirs (95%) "
             "| fwd+bwd ms per M params, ours / theirs | peak MiB ours / theirs |",
             "|---|---|---|---:|---:|---:|---:|"]
    for ours, theirs in jaxkan_pairs(rows):
        a, b = m[ours], m[theirs]
        ratio = {k: median_interval([x / y for x, y in zip(times[(ours, k)], times[(theirs, k)])])
                 for k in ("fwd", "fwd_bwd")}
        lines.append(f"| {ours} | {theirs} | {a['params']:,} / {b['params']:,} | {_ratio(ratio['fwd'])} "
                     f"| {_ratio(ratio['fwd_bwd'])} | {a['fwd_bwd'] * 1e3 / (a['params'] / 1e6):.1f} / "
                     f"{b['fwd_bwd'] * 1e3 / (b['params'] / 1e6):.1f} | {a['peak'] / 2**20:.1f} / "
                     f"{b['peak'] / 2**20:.1f} |")
    return lines


def study_section(study: dict, meta: dict) -> list[str]:
    """The AGNews study layers' table (`study_ratios`), with how it was measured (`meta`)."""
    lines = ["", f"The AGNews study's layers ({meta['in']} → param-matched width, no bias, configs/ settings), "
             f"forward+backward time ÷ Chebyshev-2 degree 2 in the same round: median of {meta['repeats']} "
             f"round-robin rounds (each the mean of {meta['inner']} calls), 95% interval of the median from order "
             f"statistics; 1-min load average before: {meta['load_before'][0]}. Written to kan_layer.json for "
             "agnews_report.py" + (f"; measured by `{meta['command']}`" + (f" ({meta['note']})" if meta.get("note")
                                                                          else "") if meta.get("from_file") else "")
             + ".", "", "| layer | width | params | fwd+bwd ms | × chebyshev2 | 95% interval "
             "| × chebyshev2 of the same degree (95% interval) |", "|---|---:|---:|---:|---:|---|---|"]
    for name, r in sorted(study.items(), key=lambda item: item[1]["ratio"]):
        same = r.get("vs_same_degree")
        same = f"{same['ratio']:.2f} ({same['lo']:.2f}–{same['hi']:.2f})" if same else "–"
        lines.append(f"| {name} | {r['width']} | {r['params']:,} | {r['ms']:.2f} | {r['ratio']:.2f} "
                     f"| {r['lo']:.2f}–{r['hi']:.2f} | {same} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--in", dest="n_in", type=int, default=576)
    parser.add_argument("--out", dest="n_out", type=int, default=1536)
    parser.add_argument("--runs", type=int, default=7, help="round-robin rounds of the main table")
    parser.add_argument("--families", nargs="*", default=sorted(basis_lib.BASES))
    parser.add_argument("--repeats", type=int, default=30, help="round-robin rounds of the study layers (0: skip)")
    parser.add_argument("--inner", type=int, default=5, help="calls per timing in those rounds")
    parser.add_argument("--no-dtype-rows", action="store_true", help="leave out the basis-dtype table")
    parser.add_argument("--out-md", default=None, help="also write the table to this file")
    parser.add_argument("--json", default=None, help="write the study layers' ratios to this file")
    parser.add_argument("--study-from", default=None,
                        help="with --repeats 0: render the study section from this earlier --json file")
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(0), (args.tokens, args.n_in), jnp.float32)
    rows = layer_rows(args.n_in, args.n_out, args.families)
    load = [round(v, 1) for v in os.getloadavg()]
    m, times = measure_round_robin({name: row[0] for name, row in rows.items()}, x, args.runs, "nnx.Linear")
    has_jaxkan = any(name.startswith("jaxkan") for name in rows)

    lines = [
        f"KANLinear at {args.tokens} tokens × {args.n_in} → {args.n_out}, float32, default degree "
        f"(2 for polynomials), domain tanh, default chunks; {args.runs} round-robin rounds, median, ratios to "
        f"nnx.Linear in the same round with the 95% interval of their median; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{jax.local_device_count()} device(s)); 1-min load average before: {load[0]}.",
        "", "*basis for backward*: `recomputed` = `KANLinear(recompute=True)` (the default: row chunks, only the "
        "input kept for the backward pass), `kept` = `recompute=False` (autodiff keeps the expansion and the "
        "basis' intermediates). Planned peak: arguments + outputs + temporaries of the compiled forward+backward "
        "(`compile().memory_analysis()`), deterministic.", ""] + layer_table(rows, m)
    if not has_jaxkan:
        lines += ["", "jaxkan is not installed: its rows are absent (pip install -r requirements-dev.txt)."]
    else:
        lines += ["", f"jaxKAN {_version('jaxkan')} (`jaxkan.layers.get_layer`): `chebyshev` = "
                  "`ChebyshevLayer(D=2)` (tanh, then T_1, T_2 by arccos/cos; its bias stands for T_0; no residual: "
                  "our Chebyshev layer's function class), `spline` = `SplineLayer(k=3, G=5)` (efficient-KAN's "
                  "B-spline layer with its defaults: SiLU residual and a per-edge scale, so 10 parameters per edge "
                  "against our B-spline's 8), each at the linear width and at the parameter count of our "
                  "param-matched layer of that family. Ours against theirs, time ratio per round (median, 95% "
                  "interval):", ""] + jaxkan_table(rows, m, times)
    if not args.no_dtype_rows:
        lines += basis_dtype_rows(args.n_in, matched_width(args.n_in, args.n_out, basis="chebyshev2"), x, args.runs)
    study, meta = {}, {}
    if args.repeats > 0:
        study = study_ratios(args.n_in, args.n_out, x, args.repeats, args.inner)
        meta = {"in": args.n_in, "repeats": args.repeats, "inner": args.inner, "load_before": load}
    elif args.study_from:
        saved = json.loads(Path(args.study_from).read_text())
        study = {"linear": saved["linear_to_chebyshev2"], **saved["ratios_to_chebyshev2"]}
        meta = {**saved, "from_file": True, "note": saved.get("note", "")}
    if study:
        lines += study_section(study, meta)
    table = "\n".join(lines)
    print(table)
    command = command_line("benchmarks.perf.kan_layer")
    write_table(args.out_md, "KANLinear layer benchmark", command, table)
    if args.json:
        if args.repeats <= 0:
            raise SystemExit("--json needs --repeats > 0")
        with open(args.json, "w") as f:
            json.dump({"command": command, "tokens": args.tokens, "in": args.n_in, "out": args.n_out,
                       "repeats": args.repeats, "inner": args.inner, "jax": jax.__version__,
                       "device": jax.devices()[0].device_kind, "load_before": load,
                       "interval": "95%, order statistics of the median over rounds",
                       "linear_to_chebyshev2": study.pop("linear"), "ratios_to_chebyshev2": study}, f, indent=1)


if __name__ == "__main__":
    main()
