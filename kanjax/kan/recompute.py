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

Chunks are contiguous blocks of x's rows (all leading axes flattened: free reshapes, no copies).
On a data-parallel mesh that shards the batch axis, the partitioner has to map those blocks onto
the shards; that case is untimed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax

MIN_CHUNK_ROWS = 128  # below this many rows per chunk the matmuls get small enough to lose speed


def chunk_count(shape: tuple[int, ...], k: int, min_rows: int = MIN_CHUNK_ROWS) -> int:
    """How many chunks `KANLinear` cuts an input of `shape` (…, in) into by default, for K = `k`.

    2·K chunks of its rows (all leading axes flattened), so each chunk's expansion (rows/2K, in·K)
    is half the size of the input; fewer where a chunk would hold under `min_rows` rows; always a
    divisor of the row count (1 when nothing larger divides, or for a 1-D input)."""
    if len(shape) < 2:
        return 1
    rows = 1
    for n in shape[:-1]:
        rows *= n
    want = max(1, min(2 * k, rows // min_rows))
    return next(c for c in range(want, 0, -1) if rows % c == 0)


def rowwise_recomputed(fn: Callable, x: jax.Array, *args, chunks: int) -> jax.Array:
    """fn(x, *args) for a row-wise fn: x (…, i) → (…, o), computed on `chunks` equal blocks of x's
    rows (leading axes flattened) under `jax.checkpoint` with nothing saved: the backward pass keeps
    only x and args and recomputes fn's intermediates one block at a time.

    fn must treat rows independently (row r of the output depends on row r of x only) and accept
    (rows, i) inputs; `chunks` must divide the row count (see `chunk_count`), else ValueError.

    With one chunk this is `jax.checkpoint(fn)` alone, and XLA:CPU merges the recomputation with the
    forward pass's computation (it removes the optimisation barriers that keep them apart), so the
    expansion stays in memory as if nothing were recomputed (tests/test_recompute.py measures this);
    from two chunks on, the loops keep the passes apart. A custom VJP with the barrier tied to the
    incoming gradient fared no better with one chunk, and in chunks it planned more memory (the
    parameter gradient accumulated in its own loop carry) than the autodiff of this loop.
    """
    shape = x.shape
    x = x.reshape(-1, shape[-1]) if x.ndim != 2 else x  # rows: a free reshape, no copy
    if x.shape[0] % chunks:
        raise ValueError(f"rowwise_recomputed: {chunks} chunks do not divide the {x.shape[0]} rows of {shape}")
    body = jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if chunks == 1:
        y = body(x, *args)
    else:
        ys = lax.map(lambda xc: body(xc, *args), x.reshape(chunks, -1, x.shape[-1]))
        y = ys.reshape(x.shape[0], ys.shape[-1])
    return y.reshape(shape[:-1] + (y.shape[-1],))


__all__ = ["MIN_CHUNK_ROWS", "chunk_count", "rowwise_recomputed"]
