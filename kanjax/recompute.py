"""Row-chunked, recomputed application of a row-wise map: how `KANLinear` keeps its basis expansion
out of memory.

A KAN layer expands its input x (…, in) into (…, in·K) basis columns before one matmul. Autodiff
keeps that expansion (and the basis' own intermediates, several arrays of the same size) for the
backward pass, and the backward pass materialises the expansion's cotangent beside them: K + 1
times the layer's input, and more, where a linear layer keeps x alone.

`rowwise_recomputed(fn, x, *args, chunks=c)` applies `fn` to c equal chunks of x's rows, one chunk
at a time (`lax.map`), under `jax.checkpoint` with nothing saved: the forward pass keeps only x and
`args` (the parameters) for the backward pass, which recomputes `fn`'s intermediates one chunk at a
time. The expansion then exists for 1/c of the rows at once, in either pass. Values and gradients
are those of `fn(x, *args)`; only the summation order of gradients accumulated over the chunks (the
parameters') differs (tests/test_recompute.py, tests/test_kan.py check them to 1e-6).

Chunks are cut along x's second-to-last axis (sequence positions, or the rows of a 2-D input):
leading (batch) axes, which a data-parallel mesh shards, stay whole in every chunk.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax import lax

MIN_CHUNK_ROWS = 128  # below this many rows per chunk the matmuls get small enough to lose speed


def chunk_count(shape: tuple[int, ...], k: int, min_rows: int = MIN_CHUNK_ROWS) -> int:
    """How many chunks `KANLinear` cuts an input of `shape` (…, T, in) into for K = `k` columns.

    2·K chunks, so each chunk's expansion (…, T/c, in·K) is half the size of the input x; fewer
    where a chunk would hold under `min_rows` rows (all leading axes counted); always a divisor of
    T (1 when x is 1-D or nothing larger divides)."""
    if len(shape) < 2:
        return 1
    t, rows = shape[-2], 1
    for n in shape[:-1]:
        rows *= n
    want = max(1, min(2 * k, rows // min_rows, t))
    return next(c for c in range(want, 0, -1) if t % c == 0)


def rowwise_recomputed(fn: Callable, x: jax.Array, *args, chunks: int) -> jax.Array:
    """fn(x, *args) for a row-wise fn: x (…, T, i) → (…, T, o), computed on `chunks` equal chunks
    of T and recomputed in the backward pass (only x and args are saved for it).

    fn must treat rows independently (row r of the output depends on row r of x only) and accept
    any leading shape; `chunks` must divide T (see `chunk_count`). With chunks=1 this is
    `jax.checkpoint(fn)` alone. Raises ValueError on a chunk count that does not divide T.
    """
    body = jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if chunks == 1:
        return body(x, *args)
    t = x.shape[-2]
    if x.ndim < 2 or t % chunks:
        raise ValueError(f"rowwise_recomputed: {chunks} chunks do not divide axis -2 of shape {x.shape}")
    lead = x.shape[:-2]
    # (…, T, i) → (c, …, T/c, i): a free reshape for 2-D x, one copy of x otherwise.
    xs = jax.numpy.moveaxis(x.reshape(lead + (chunks, t // chunks, x.shape[-1])), -3, 0)
    ys = lax.map(lambda xc: body(xc, *args), xs)  # (c, …, T/c, o)
    return jax.numpy.moveaxis(ys, 0, -3).reshape(lead + (t, ys.shape[-1]))


__all__ = ["MIN_CHUNK_ROWS", "chunk_count", "rowwise_recomputed"]
