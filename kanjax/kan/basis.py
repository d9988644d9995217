"""Basis-function families for KAN layers, as pure functions (no Flax).

Every family is one small ``terms(x, xp, **params)`` function that returns its K columns for a
*single* scalar input ``x``, using only arithmetic and ``xp`` functions: ``expand`` lifts it with
``jax.vmap`` over the flattened input (no batch shapes or dtypes in family code), and
``expand_numpy`` calls it with ``xp=numpy`` on float64 arrays, for constants such as the column
normalisation or the init variance.

The definitions live in `kanjax.kan.basis_terms` (numpy only), the one file exports ship beside their
PyTorch code (as `kanjax_basis.py`); this module re-exports them and adds ``expand``, the JAX
lifting.

Polynomials are static, Python-unrolled three-term recurrences (no ``acos``
tricks, no ``lax`` loops): they are exact for all x (not only |x| <= 1),
differentiable everywhere including x = +-1, and XLA fuses the short unrolled
chain. Columns are P_0..P_degree, unnormalised, exactly as classically defined.

Families and their natural input interval (a layer maps its squashed input
(-1, 1) onto it):

===========  ==================================  =====  =============
name         keywords (defaults)                 K      interval
===========  ==================================  =====  =============
chebyshev    degree=2                            d+1    (-1, 1)
chebyshev2   degree=2                            d+1    (-1, 1)
legendre     degree=2                            d+1    (-1, 1)
hermite      degree=2  (physicists', H_1 = 2x)   d+1    (-2, 2)
laguerre     degree=2, alpha=0.0                 d+1    (0, 4)
jacobi       degree=2, alpha=1.0, beta=1.0       d+1    (-1, 1)
gegenbauer   degree=2, alpha=1.5                 d+1    (-1, 1)
bessel       degree=2  (y_n, y_1 = 1 + x)        d+1    (-1, 1)
fibonacci    degree=2  (F_0 = 0, F_1 = 1)        d+1    (-1, 1)
lucas        degree=2  (L_0 = 2, L_1 = x)        d+1    (-1, 1)
bspline      grid=5, order=3, grid_range=(-1,1)  G+k    grid_range
rbf          num_centers=8, centers=None,        len(c) grid_range
             width=None, grid_range=(-1,1)
rational     degree=3, den_coef=None             m+1    (-1, 1)
group_       degree=5, num_coef=None,            1      (-1, 1)
rational     den_coef=None
===========  ==================================  =====  =============

Rational ("safe Pade", as in the Kolmogorov-Arnold Transformer): columns ``x**i / Q(x)``, i = 0..m,
``Q(x) = 1 + |sum_{j=1..n} b_j x**j|`` >= 1 (no poles, bounded gradients). The layer owns b and
passes it in as ``den_coef`` (traced is fine): shape (n,) shares one denominator, shape
``x.shape[-1:] + (n,)`` gives each input feature its own; None means Q = 1.

Group rational (KAT's GR-KAN unit, `safe_rational`): one column, the learned function itself,
``P(x) / Q(x)`` with ``P = sum_{i=0..m} a_i x**i`` (``num_coef``, m = degree) and
``Q = 1 + sum_{i=1..n} |b_i| |x|**i`` (``den_coef``). A KAN layer owns one (a, b) per group of input
channels (`group_index`) and passes them per feature; None is the identity (P = x, Q = 1), the
function the layer starts from, so the column layout is the identity's (offset 0, scale 1).

B-splines use uniform knots extended by ``order`` knots on each side and the
Cox-de Boor recursion from half-open indicators [t_j <= x < t_{j+1}], so the K
bases sum to 1 on [lo, hi) and vanish far outside. RBF columns are Gaussians
``exp(-((x - c_j) / width)**2)``; ``centers`` defaults to
``linspace(lo, hi, num_centers)`` and ``width`` to ``(hi - lo) / (K - 1)``
(``hi - lo`` when K = 1). Passing ``centers`` sets ``num_centers`` to its length.
"""

from __future__ import annotations

import functools

from kanjax.kan.basis_terms import (
    BASES,
    CENTERS,
    DOMAINS,
    GH_NODES,
    GH_WEIGHTS,
    Basis,
    _split_features,
    column_layout,
    expand_numpy,
    freeze,
    group_index,
    group_rational,
    identity_rational,
    n_basis,
    resolve_params,
    safe_rational,
    silu,
    squash,
    squash_normal,
    to_interval,
)


def expand(name: str, x, **params):
    """Evaluate the K basis columns of family ``name`` at every entry of ``x``.

    x: any shape S (ints are promoted to float32).  Returns shape S + (K,) in
    x's floating dtype. Per-feature params (rational ``den_coef`` of shape
    (S[-1], n)) are matched along x's last axis. Array params may be traced.
    """
    import jax.numpy as jnp

    p = resolve_params(name, **params)
    basis = BASES[name]
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    n_cols = basis.size(**p)
    feats = _split_features(basis, p, x.shape)
    # Array params (den_coef) are runtime arguments that follow x's dtype (so the
    # output dtype is x's); everything else is static configuration.
    arrays = {k: jnp.asarray(v, x.dtype) for k, v in p.items() if hasattr(v, "ndim")}
    static = tuple((k, v) for k, v in p.items() if k not in arrays)
    feats = {k: jnp.asarray(v, x.dtype) for k, v in feats.items()}
    # Flatten before the cached jit so every input shape of the same size shares it.
    flat = x.reshape(-1, x.shape[-1]) if feats else x.reshape(-1)
    return _lifted(name, static, bool(feats))(flat, arrays, feats).reshape(x.shape + (n_cols,))


@functools.lru_cache(maxsize=256)
def _lifted(name, static, per_feature):
    """jit(vmap(terms)) for one static configuration: (N,) or (N, d) -> (..., K).

    The jit is for eager callers (one compiled graph instead of op-by-op
    dispatch); inside a caller's jit/grad it simply inlines.
    """
    import jax
    import jax.numpy as jnp

    terms, static = BASES[name].terms, dict(static)

    def one(xi, arrays, fp):  # xi: () -> (K,)
        return jnp.stack(terms(xi, jnp, **static, **arrays, **fp)).astype(xi.dtype)

    if per_feature:  # over rows, then over features each with its own params
        return jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None, 0)), in_axes=(0, None, None)))
    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


__all__ = ["BASES", "Basis", "CENTERS", "DOMAINS", "GH_NODES", "GH_WEIGHTS", "column_layout", "expand",
           "expand_numpy", "freeze", "group_index", "group_rational", "identity_rational", "n_basis",
           "resolve_params", "safe_rational", "silu", "squash", "squash_normal", "to_interval"]
