"""`x @ W` with a hand-written backward pass: the one product every projection and KAN layer uses.

XLA:CPU differentiates `x (…, i) @ W (i, o)` into a weight gradient `xᵀ · g` whose operands it
first copies into transposed layouts; those copies of (tokens × width) activations, fused with the
elementwise producers of g, cost more than the matmuls themselves (benchmarks/results/perf/train_step.md).
Here the weight gradient is computed as `(gᵀ x)ᵀ`,
a product XLA runs on the activations as they lie, followed by a transpose of the small (o, i)
result. Values are the same products, summed in the same order by the same kernels up to layout;
`tests/kan/test_matmul.py` checks them against jax.grad of the plain product.

`dot_general` has `jax.lax.dot_general`'s signature, so it plugs into `nnx.Linear(dot_general=…)`;
contractions other than "last axis of x with the first of a 2-D W" fall through to lax unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (…, i) @ w (i, o) -> (…, o), in the operands' common dtype."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _dense_fwd(x, w):
    return dense(x, w), (x, w)


def _dense_bwd(res, g):
    x, w = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (k, i), (k, o)
    dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))  # g @ wᵀ: (…, i)
    dw = lax.dot_general(g2, x2, (((0,), (0,)), ((), ()))).T  # (gᵀ x)ᵀ: (i, o)
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
    """`jax.lax.dot_general` that routes the plain `x @ W` contraction through `dense`."""
    (lc, rc), (lb, rb) = dimension_numbers
    plain = (not lb and not rb and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and rhs.ndim == 2
             and precision is None and out_sharding is None
             and (preferred_element_type is None or jnp.dtype(preferred_element_type) == jnp.result_type(lhs, rhs)))
    if plain and lhs.dtype == rhs.dtype:
        return dense(lhs, rhs)
    kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


__all__ = ["dense", "dot_general"]
