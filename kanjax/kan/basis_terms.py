"""The basis families' definitions, framework-agnostic: each family is one ``terms(x, xp, **params)``
function of a single scalar input using only arithmetic and ``xp`` functions (numpy, jax.numpy or
torch), with its parameter checks, its interval, the domain maps a KAN layer feeds it through
(`squash`, `to_interval`) and the column normalisation (`column_layout`).

This file imports numpy and nothing else: `kanjax.hf.kan_export` ships it unchanged beside exported
models as `kanjax_basis.py`, where the PyTorch modelling code calls the same functions with
``xp=torch``. `kanjax.kan.basis` (the module to import) adds the JAX lifting, ``expand``, and
documents the families.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Basis:
    """One basis family (see the module docstring). The last two fields are extras:
    ``check(p, given)`` validates (and may normalise, in place) the merged params
    ``p`` given the caller's explicit keywords; ``feature_params`` names array
    params whose (features, n) form gives each entry of x's last axis its own row.
    """

    name: str
    terms: Callable  # terms(x, xp, **params) -> list of K arrays shaped like x
    defaults: Mapping[str, Any]
    size: Callable[..., int]
    interval: Callable[..., tuple[float, float]]
    polynomial: bool
    check: Callable[[dict, Mapping[str, Any]], None] | None = None
    feature_params: tuple[str, ...] = ()


# ----------------------------------------------------------------- families


def _full(x, xp, v):
    # Constant columns (P_0 = 1, F_0 = 0, ...) must still be arrays shaped and
    # typed like x, or stacking under vmap / numpy broadcasting would break.
    return xp.full_like(x, v) if isinstance(v, numbers.Number) else v


def _recurrence(x, xp, degree, p0, p1, step):
    """[P_0, ..., P_degree] from P_0, P_1 and step(n, P_{n-1}, P_{n-2}) -> P_n."""
    ps = [p0, p1]
    for n in range(2, degree + 1):  # static unroll: degree is a Python int
        ps.append(step(n, ps[-1], ps[-2]))
    return [_full(x, xp, p) for p in ps[: degree + 1]]


def _chebyshev(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, x, lambda n, a, b: 2 * x * a - b)


def _chebyshev2(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 2 * x, lambda n, a, b: 2 * x * a - b)


def _legendre(x, xp, degree):
    # Coefficients are folded in Python float64 so float32 runs do fewer ops.
    return _recurrence(x, xp, degree, 1.0, x,
                       lambda n, a, b: ((2 * n - 1) / n) * x * a - ((n - 1) / n) * b)


def _hermite(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 2 * x,
                       lambda n, a, b: 2 * x * a - (2 * (n - 1)) * b)


def _laguerre(x, xp, degree, alpha):
    return _recurrence(x, xp, degree, 1.0, (1 + alpha) - x,
                       lambda n, a, b: (((2 * n - 1 + alpha) / n) - x / n) * a
                       - ((n - 1 + alpha) / n) * b)


def _jacobi(x, xp, degree, alpha, beta):
    s = alpha + beta

    def step(n, a, b):
        c = 2 * n + s
        den = 2 * n * (n + s) * (c - 2)  # > 0 for n >= 2 since alpha, beta > -1
        lin = (c - 1) * c * (c - 2) / den
        off = (c - 1) * (alpha * alpha - beta * beta) / den
        back = 2 * (n + alpha - 1) * (n + beta - 1) * c / den
        return (lin * x + off) * a - back * b

    return _recurrence(x, xp, degree, 1.0, (alpha + 1) + (s + 2) * 0.5 * (x - 1), step)


def _gegenbauer(x, xp, degree, alpha):
    return _recurrence(x, xp, degree, 1.0, (2 * alpha) * x,
                       lambda n, a, b: (2 * (n + alpha - 1) / n) * x * a
                       - ((n + 2 * alpha - 2) / n) * b)


def _bessel(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 1 + x, lambda n, a, b: (2 * n - 1) * x * a + b)


def _fibonacci(x, xp, degree):
    return _recurrence(x, xp, degree, 0.0, 1.0, lambda n, a, b: x * a + b)


def _lucas(x, xp, degree):
    return _recurrence(x, xp, degree, 2.0, x, lambda n, a, b: x * a + b)


def _bspline(x, xp, grid, order, grid_range):
    lo, hi = grid_range
    h = (hi - lo) / grid
    t = [lo + (j - order) * h for j in range(grid + 2 * order + 1)]
    one, zero = xp.ones_like(x), xp.zeros_like(x)
    # Half-open indicators make the bases a partition of unity on [lo, hi) and
    # exactly 0 far outside, where gradients are then 0 rather than NaN.
    b = [xp.where((x >= t[j]) & (x < t[j + 1]), one, zero) for j in range(len(t) - 1)]
    for p in range(1, order + 1):  # uniform knots: both denominators are p*h
        inv = 1.0 / (p * h)
        b = [((x - t[j]) * b[j] + (t[j + p + 1] - x) * b[j + 1]) * inv
             for j in range(len(b) - 1)]
    return b


def _rbf_layout(num_centers, centers, width, grid_range):
    """(centers tuple, width) with the defaults filled in."""
    lo, hi = grid_range
    if centers is None:
        centers = tuple(float(c) for c in np.linspace(lo, hi, num_centers))
    if width is None:
        width = (hi - lo) / max(len(centers) - 1, 1)
    return tuple(centers), width


def _rbf(x, xp, num_centers, centers, width, grid_range):
    centers, width = _rbf_layout(num_centers, centers, width, grid_range)
    inv = 1.0 / width
    return [xp.exp(-(((x - c) * inv) ** 2)) for c in centers]


def _rational(x, xp, degree, den_coef):
    cols, power = [_full(x, xp, 1.0)], x
    for _ in range(degree):
        cols.append(power)
        power = power * x
    if den_coef is None or den_coef.shape[-1] == 0:
        return cols
    # Horner for sum_{j>=1} b_j x^j; den_coef[..., j] is a scalar under vmap and
    # a (d,) vector broadcasting against x's last axis in the numpy per-feature case.
    s = 0.0
    for j in reversed(range(den_coef.shape[-1])):
        s = (s + den_coef[..., j]) * x
    inv_q = 1.0 / (1.0 + xp.abs(s))
    return [c * inv_q for c in cols]


def safe_rational(x, xp, num_coef, den_coef):
    """KAT's safe Pade unit P(x) / Q(x): P(x) = sum_{i=0..m} a_i x**i, Q(x) = 1 + sum_{i=1..n} |b_i| |x|**i.

    num_coef (..., m+1) holds a_0..a_m and den_coef (..., n) holds b_1..b_n; their leading axes
    broadcast against x (a row per feature, or per group after `group_rational`'s reshape). Q >= 1
    everywhere, so there is no pole whatever the coefficients. |b| is written as where(b < 0, -b, b):
    its derivative at b = 0 is 1 (as in KAT's kernels), so a denominator that starts at zero still
    learns (the derivative of abs there is 0 in PyTorch).
    """
    p = 0.0
    for j in reversed(range(num_coef.shape[-1])):  # Horner, static unroll
        p = p * x + num_coef[..., j]
    ax, q = xp.abs(x), 0.0
    for j in reversed(range(den_coef.shape[-1])):
        b = den_coef[..., j]
        q = (q + xp.where(b < 0, -b, b)) * ax
    return p / (1.0 + q)


def identity_rational(degree: int, den_degree: int) -> tuple[np.ndarray, np.ndarray]:
    """(a (m+1,), b (n,)) of the rational that is exactly the identity: P(x) = x, Q = 1."""
    a = np.zeros(degree + 1)
    a[1] = 1.0
    return a, np.zeros(den_degree)


def _group_rational(x, xp, degree, num_coef, den_coef):
    # One column, the learned function itself. None (the layout, column_layout's constants):
    # the identity the layer starts from.
    if num_coef is None:
        num_coef, den_coef = identity_rational(degree, 0)
    if den_coef is None:
        den_coef = np.zeros(0)
    return [_full(x, xp, safe_rational(x, xp, num_coef, den_coef))]


def group_index(n_features: int, num_groups: int) -> np.ndarray:
    """(n_features,) group of each channel: contiguous blocks, channel c in group c * G // n.

    The same as KAT's c // (n / G) when G divides n; otherwise the blocks differ in size by one.
    """
    return (np.arange(n_features) * num_groups) // n_features


def silu(x, xp):
    """SiLU x·σ(x) = x / (1 + e^{-x}), written through e^{-|x|}: no overflow, in any xp."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, x, x * e) / (1.0 + e)


def group_rational(x, num_coef, den_coef, xp=np, residual=False):
    """x (..., C) -> (..., C): channel c through its group's safe rational (KAT's GR-KAN activation),
    plus SiLU(x) when `residual` (φ = SiLU + P/Q: exactly SiLU while P = 0).

    num_coef (G, m+1), den_coef (G, n), group of each channel from `group_index(C, G)`.
    """
    idx = group_index(x.shape[-1], num_coef.shape[0])  # numpy, JAX and PyTorch all index with it
    y = safe_rational(x, xp, num_coef[idx], den_coef[idx])
    return silu(x, xp) + y if residual else y


# ---------------------------------------------------------------- validation


def _err(name, key, msg, value):
    return ValueError(f"basis {name!r}: {key} {msg}, got {value!r}")


def _int(lower):
    def conv(name, key, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise _err(name, key, "must be an integer", v)
        if v < lower:
            raise _err(name, key, f"must be >= {lower}", v)
        return int(v)
    return conv


def _real(name, key, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise _err(name, key, "must be a finite real number", v)
    return float(v)


def _opt_width(name, key, v):
    if v is not None and _real(name, key, v) <= 0:
        raise _err(name, key, "must be > 0", v)
    return None if v is None else float(v)


def _grid_range(name, key, v):
    try:
        lo, hi = (float(e) for e in v)
    except (TypeError, ValueError):
        raise _err(name, key, "must be a pair (lo, hi)", v) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise _err(name, key, "must be finite with lo < hi", v)
    return (lo, hi)


def _centers(name, key, v):
    if v is None:
        return None
    c = np.asarray(v, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)):
        raise _err(name, key, "must be a non-empty 1-D sequence of finite numbers", v)
    return tuple(c.tolist())


def _den_coef(name, key, v):
    if v is None:
        return None
    if not hasattr(v, "ndim"):  # lists/tuples; jax arrays (maybe traced) pass through
        v = np.asarray(v, dtype=np.float64)
    if v.ndim not in (1, 2):
        raise _err(name, key, "must have shape (n,) or (features, n)", getattr(v, "shape", v))
    return v


# How each keyword is checked and normalised, whichever family accepts it.
_CONVERTERS = {
    "degree": _int(0), "grid": _int(1), "order": _int(0), "num_centers": _int(1),
    "alpha": _real, "beta": _real, "width": _opt_width, "grid_range": _grid_range,
    "centers": _centers, "den_coef": _den_coef, "num_coef": _den_coef,
}


def _above(name, **bounds):
    """A check requiring p[key] > bound for each keyword bound."""
    def check(p, given):
        for key, bound in bounds.items():
            if p[key] <= bound:
                raise _err(name, key, f"must be > {bound}", p[key])
    return check


def _check_gegenbauer(p, given):
    _above("gegenbauer", alpha=-0.5)(p, given)
    if p["alpha"] == 0:  # C_n^(0) vanishes identically for n >= 1
        raise _err("gegenbauer", "alpha", "must be != 0", p["alpha"])


def _check_rbf(p, given):
    if p["centers"] is not None:
        k = len(p["centers"])
        if "num_centers" in given and p["num_centers"] != k:
            raise _err("rbf", "num_centers", f"contradicts len(centers) = {k}", p["num_centers"])
        p["num_centers"] = k


def _check_group_rational(p, given):
    if p["degree"] < 1:  # the identity it starts from needs the x term
        raise _err("group_rational", "degree", "must be >= 1", p["degree"])
    a = p["num_coef"]
    if a is not None and a.shape[-1] != p["degree"] + 1:
        raise _err("group_rational", "num_coef", f"must have degree + 1 = {p['degree'] + 1} columns",
                   tuple(a.shape))


# ------------------------------------------------------------------ registry


def _poly(name, terms, interval=(-1.0, 1.0), check=None, **extra):
    return Basis(name=name, terms=terms,
                 defaults=types.MappingProxyType({"degree": 2, **extra}),
                 size=lambda degree, **_: degree + 1,
                 interval=lambda **_: interval, polynomial=True, check=check)


_GRID = (-1.0, 1.0)

BASES: dict[str, Basis] = {b.name: b for b in (
    _poly("chebyshev", _chebyshev),
    _poly("chebyshev2", _chebyshev2),
    _poly("legendre", _legendre),
    _poly("hermite", _hermite, interval=(-2.0, 2.0)),
    _poly("laguerre", _laguerre, interval=(0.0, 4.0), check=_above("laguerre", alpha=-1.0),
          alpha=0.0),
    _poly("jacobi", _jacobi, check=_above("jacobi", alpha=-1.0, beta=-1.0), alpha=1.0, beta=1.0),
    _poly("gegenbauer", _gegenbauer, check=_check_gegenbauer, alpha=1.5),
    _poly("bessel", _bessel),
    _poly("fibonacci", _fibonacci),
    _poly("lucas", _lucas),
    Basis("bspline", _bspline,
          types.MappingProxyType({"grid": 5, "order": 3, "grid_range": _GRID}),
          size=lambda grid, order, **_: grid + order,
          interval=lambda grid_range, **_: tuple(grid_range), polynomial=False),
    Basis("rbf", _rbf,
          types.MappingProxyType({"num_centers": 8, "centers": None, "width": None,
                                  "grid_range": _GRID}),
          size=lambda num_centers, centers=None, **_: (
              num_centers if centers is None else len(centers)),
          interval=lambda grid_range, **_: tuple(grid_range), polynomial=False,
          check=_check_rbf),
    Basis("rational", _rational,
          types.MappingProxyType({"degree": 3, "den_coef": None}),
          size=lambda degree, **_: degree + 1,
          interval=lambda **_: (-1.0, 1.0), polynomial=False,
          feature_params=("den_coef",)),
    Basis("group_rational", _group_rational,
          types.MappingProxyType({"degree": 5, "num_coef": None, "den_coef": None}),
          size=lambda **_: 1,
          interval=lambda **_: (-1.0, 1.0), polynomial=False,
          check=_check_group_rational, feature_params=("num_coef", "den_coef")),
)}


# ---------------------------------------------------------------- public API


def resolve_params(name: str, **params) -> dict:
    """Defaults of family ``name`` merged with ``params``, validated and normalised.

    Raises ValueError for an unknown family (listing the known ones), an unknown
    keyword (listing the accepted ones) or a bad value (naming the parameter).
    Idempotent: ``resolve_params(name, **resolve_params(name, **p))`` is a no-op.
    """
    if name not in BASES:
        raise ValueError(f"unknown basis {name!r}; known bases: {', '.join(BASES)}")
    basis = BASES[name]
    for key in params:
        if key not in basis.defaults:
            raise ValueError(f"basis {name!r}: unknown keyword {key!r}; "
                             f"accepted: {', '.join(basis.defaults)}")
    p = {k: _CONVERTERS[k](name, k, params.get(k, v)) for k, v in basis.defaults.items()}
    if basis.check is not None:
        basis.check(p, params)
    return p


def n_basis(name: str, **params) -> int:
    """Number of basis columns K of family ``name`` with these params."""
    return BASES[name].size(**resolve_params(name, **params))


def _split_features(basis, p, shape):
    """Pop the params given in per-feature form, checking them against x.shape[-1]."""
    feats = {}
    for k in basis.feature_params:
        v = p[k]
        if v is not None and v.ndim == 2:
            if len(shape) == 0 or v.shape[0] != shape[-1]:
                raise ValueError(f"basis {basis.name!r}: per-feature {k} of shape "
                                 f"{tuple(v.shape)} needs x.shape[-1] == {v.shape[0]}, "
                                 f"got x.shape = {tuple(shape)}")
            feats[k] = p.pop(k)
    return feats


def expand_numpy(name: str, x: np.ndarray, **params) -> np.ndarray:
    """``expand`` in float64 numpy (no tracing): shape x.shape + (K,).

    Array params must be concrete here (a traced den_coef cannot be used).
    """
    p = resolve_params(name, **params)
    basis = BASES[name]
    x = np.asarray(x, dtype=np.float64)
    p = {key: np.asarray(v, np.float64) if hasattr(v, "ndim") else v for key, v in p.items()}
    _split_features(basis, dict(p), x.shape)  # shape check only: numpy broadcasts
    return np.stack([np.broadcast_to(c, x.shape) for c in basis.terms(x, np, **p)], axis=-1)


# ------------------------------------------------------------- how a KAN layer feeds the basis

DOMAINS = ("tanh", "layernorm", "clip", "none")
CENTERS = ("none", "zero", "gauss")
# Gauss-Hermite (probabilists') nodes: E[f(X)] for X ~ N(0, 1) without sampling noise.
GH_NODES, GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
GH_WEIGHTS = GH_WEIGHTS / GH_WEIGHTS.sum()


def squash(x, domain: str, xp=np):
    """(…, i) → (…, i) in [-1, 1] (unchanged for "none"); xp is numpy, jax.numpy or torch."""
    if domain == "tanh":
        return xp.tanh(x)
    if domain == "clip":
        return xp.clip(x, -1.0, 1.0)
    if domain == "layernorm":
        # Standardise over features first, so the squashing sees the same scale whatever the
        # magnitude of the activations (inputs of 1e4 still spread over the basis).
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return xp.tanh((x - mean) / xp.sqrt(var + 1e-5))
    if domain == "none":
        return x
    raise ValueError(f"unknown KAN domain {domain!r}; known: {DOMAINS}")


def squash_normal(x: np.ndarray, domain: str) -> np.ndarray:
    """`squash` of independent N(0, 1) features (for constants): layernorm leaves them N(0, 1)."""
    return squash(x, "tanh" if domain == "layernorm" else domain)


def to_interval(u, lo: float, hi: float, domain: str):
    """Map the squashed input u ∈ [-1, 1] onto the basis' interval [lo, hi] ("none": unchanged)."""
    if domain == "none" or (lo, hi) == (-1.0, 1.0):
        return u
    return lo + (u + 1.0) * (0.5 * (hi - lo))


@functools.lru_cache(maxsize=512)
def column_layout(name: str, items: tuple, domain: str, center: str
                  ) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """(active, offsets, scales) of family `name` with resolved params `items` (sorted pairs).

    A KAN layer uses column k as s_k (B_k(t) − o_k): o_k is the centre (0 for "none", B_k at input
    0 for "zero", the mean of B_k for N(0, 1) inputs for "gauss"), s_k = 1 / max |B_k − o_k| on the
    interval (4001 points, float64), so every column is O(1) at any degree. Columns that vanish on
    the interval (F_0 = 0; P_0 once centred) are dropped: `active` lists the kept ones.
    """
    if center not in CENTERS:
        raise ValueError(f"unknown centre {center!r}; known: {CENTERS}")
    params = dict(items)
    lo, hi = BASES[name].interval(**params)
    raw = expand_numpy(name, np.linspace(lo, hi, 4001), **params)  # (n, K)
    if center == "zero":
        offsets = expand_numpy(name, np.asarray([to_interval(0.0, lo, hi, domain)]), **params)[0]
    elif center == "gauss":
        offsets = GH_WEIGHTS @ expand_numpy(name, to_interval(squash_normal(GH_NODES, domain), lo, hi, domain),
                                            **params)
    else:
        offsets = np.zeros(raw.shape[-1])
    peak = np.max(np.abs(raw - offsets), axis=0)
    active = tuple(int(k) for k in np.flatnonzero(peak > 1e-9 * max(1.0, float(np.max(np.abs(raw))))))
    return active, tuple(float(offsets[k]) for k in active), tuple(float(1.0 / peak[k]) for k in active)


def freeze(value):
    """Lists and arrays → nested tuples of Python scalars: hashable (jit cache keys, lru_cache)
    and what JSON gives back as lists."""
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        if not isinstance(items, list):  # a 0-d array
            return items
        return tuple(freeze(v) for v in items)
    return value
