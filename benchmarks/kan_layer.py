"""KANLinear speed and memory at the SmolLM2 MLP shape, against nnx.Linear in the same process.

    python benchmarks/kan_layer.py [--tokens 1024 --in 576 --out 1536 --runs 10] [--out-md PATH]

For every basis family: median forward and forward+backward time (warm jit, block_until_ready),
and the peak memory XLA plans for the compiled step (arguments + outputs + temporaries), at the
same output width as the linear layer and at the parameter-matched width (`matched_width`).
Ratios are to `nnx.Linear(in, out)` measured in the same run. When the optional `jaxkan` package
is importable its Chebyshev layer is timed at the same shape too.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from kanjax import basis as basis_lib
from kanjax.kan import KANLinear, count_params, matched_width


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


def measure(module: nnx.Module, x: jax.Array, runs: int) -> dict:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)  # rest: e.g. RNG state of other layers

    @jax.jit
    def forward(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    @jax.jit
    def forward_backward(params, x):
        def loss(params, x):
            return jnp.sum(nnx.merge(graphdef, params, rest)(x).astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1))(params, x)

    return {
        "params": count_params(module),
        "fwd": median_seconds(forward, params, x, runs=runs),
        "fwd_bwd": median_seconds(forward_backward, params, x, runs=runs),
        "peak": planned_peak_bytes(forward_backward, params, x),
    }


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
    parser.add_argument("--out-md", default=None, help="also write the table to this file")
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
    table = "\n".join(lines)
    print(table)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(f"# KANLinear layer benchmark\n\nCommand: `python benchmarks/kan_layer.py "
                    f"--out-md {args.out_md}`\n\n{table}\n")


if __name__ == "__main__":
    main()
