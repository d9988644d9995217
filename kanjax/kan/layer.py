"""`KANLinear`: a drop-in replacement for `nnx.Linear` whose edges are learned 1-D functions.

    y_o = Σ_i φ_io(x_i) + bias_o,      φ_io(x) = Σ_k coef[i, k, o] · s_k · B_k(t(x))

where B_k are the basis functions of `kanjax.kan.basis`, t(x) maps the input into the basis' natural
interval (the `domain`), and s_k = 1 / max |B_k| on that interval makes every column O(1), so
float16 never overflows at high degree (Hermite, Bessel, Gegenbauer grow like n! otherwise).

The basis is evaluated in float32 (`basis_dtype`) and cast to the compute dtype for the
contraction: the elementwise recurrences are a few percent of the layer's time and float16
recurrences lose digits at degree 8 (benchmarks/perf/kan_layer.py measures this). The contraction is a
single matmul of (…, in·K) by (in·K, out), as in efficient-kan.

By default (`recompute=True`) the expansion and that matmul run through
`kanjax.kan.recompute.rowwise_recomputed`: a few row chunks at a time, with the expansion recomputed in
the backward pass instead of kept, so the layer holds for its backward what a linear layer holds
(its input), and the (…, in·K) expansion never exists for all rows at once
(benchmarks/results/perf/kan_layer.md measures memory and time with and without).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.kan import basis as basis_lib
from kanjax.kan import recompute as recompute_lib
from kanjax.kan.matmul import dense

DOMAINS, CENTERS = basis_lib.DOMAINS, basis_lib.CENTERS
BASE_BRANCHES = (None, "silu", "linear")
COEF_INITS = ("random", "linear")
_GH_NODES, _GH_WEIGHTS = basis_lib.GH_NODES, basis_lib.GH_WEIGHTS


class KANLinear(nnx.Module):
    """KAN layer, (…, in_features) → (…, out_features), any number of leading dims.

    Args:
      basis: a family of `kanjax.kan.BASES` ("chebyshev2" by default; why:
        benchmarks/results/agnews/agnews.md).
      degree: polynomial degree (polynomial and rational families; ignored by bspline / rbf).
      domain: how inputs reach the basis' interval: "tanh" (default), "layernorm"
        (standardise over features, then tanh), "clip", or "none" (the raw input is fed to the
        basis, for exact conversion of linear layers with `from_linear`).
      base: optional residual branch: "silu" (silu(x) @ W_base, as in the original KAN) or
        "linear" (x @ W_base).
      den_degree: rational family: degree n of the learned denominator 1 + |Σ_j b_ij x^j|,
        one set of n coefficients per input feature (parameter `den_coef`, shape (in, n));
        group_rational: degree n of Q = 1 + Σ_j |b_gj| |x|^j, one set per group (`den_coef` (G, n)).
      num_groups: group_rational only (KAT's GR-KAN): the input channels form G = min(num_groups,
        in) contiguous groups (`kanjax.kan.basis_terms.group_index`), each with one learned rational
        φ_g = P_g / Q_g (numerator degree `degree`: `num_coef` (G, degree + 1); denominator
        `den_coef` (G, den_degree)), so y = φ(x) @ coef[:, 0, :] + bias: a group-rational
        activation, then one linear map. Every φ_g starts as the identity (P = x, Q = 1), and
        coef gets KAT's variance-preserving init (std ∝ 1 / sqrt(in · E[φ(x)²]), x ~ N(0, 1)), so
        the layer starts as a plain linear layer of the squashed input.
      input_scale: a learned per-input-channel scale s (parameter `input_scale` (in,), init 1)
        applied before the domain map, t = map(s ⊙ x): the basis sees each channel on its own range
        (`kanjax.kan.range_refit` sets it from a batch's percentiles and refits coef). The base branch
        still sees the raw x.
      init_scale: multiplies the variance-preserving init (1: output std of a default
        nnx.Linear for N(0, 1) inputs; kanify matches the init scale of the layer it replaces).
      center: "zero" (default: each column minus its value at input 0, so every edge function
        vanishes at 0 and the constant column drops out), "none" (the basis as defined) or
        "gauss" (minus its mean for N(0, 1) inputs). A column with a non-zero mean gets the same
        gradient sign from every input, and Adam's per-coefficient steps then move the layer's
        output for all tokens alike, in·lr per step (benchmarks/results/agnews/kan_recipe.md).
        At degree 2 it makes every symmetric family (Chebyshev, Legendre, Gegenbauer,
        Jacobi(α=β), Hermite) the same layer: columns ∝ x and x².
      coef_init: "random" draws every coefficient i.i.d., so most of the output at init is the
        constant column and the even terms, the same for every token. "linear" starts the layer
        as a random linear map of the squashed input, coef[i, :, o] = a · W[i, o] with
        Σ_k a_k s_k B_k(t(u)) = u: the function a linear layer starts from, with the higher-order
        coefficients at zero for gradients to grow (benchmarks/results/agnews/kan_recipe.md).
      axes: logical axis names (in_axis, out_axis) for sharding; the basis axis is "basis".
      dtype: compute dtype of the contraction (None: the input's); parameters stay param_dtype.
      basis_dtype: dtype the basis is evaluated in (float32 by default, see module docstring).
      recompute: evaluate expansion and contraction in row chunks and recompute the expansion in
        the backward pass (see module docstring); False keeps autodiff's plain residuals. Values
        and gradients are the same either way (up to float summation order).
      chunks: number of row chunks with `recompute` (None: `kanjax.kan.recompute.chunk_count`: 2·K
        chunks of at least 128 rows for a 2-D input, else 1); it must divide the input's
        second-to-last axis.
      **basis_params: any other keyword of the basis (grid, order, alpha, beta, centers, …).

    Parameters: coef (in, K, out), bias (out,), base_kernel (in, out) if base,
    den_coef (in, n) for rational, num_coef (G, m + 1) and den_coef (G, n) for group_rational,
    input_scale (in,) with input_scale=True.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        basis: str = "chebyshev2",
        degree: int = 2,
        domain: str = "tanh",
        base: str | None = None,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        basis_dtype: Any = jnp.float32,
        den_degree: int = 2,
        num_groups: int = 8,
        input_scale: bool = False,
        init_scale: float = 1.0,
        coef_init: str = "linear",
        center: str = "zero",
        axes: Sequence[str | None] = (None, None),
        recompute: bool = True,
        chunks: int | None = None,
        rngs: nnx.Rngs,
        **basis_params,
    ):
        if domain not in DOMAINS:
            raise ValueError(f"KANLinear: domain={domain!r} is not one of {DOMAINS}")
        if base not in BASE_BRANCHES:
            raise ValueError(f"KANLinear: base={base!r} is not one of {BASE_BRANCHES}")
        if center not in CENTERS:
            raise ValueError(f"KANLinear: center={center!r} is not one of {CENTERS}")
        if coef_init not in COEF_INITS:
            raise ValueError(f"KANLinear: coef_init={coef_init!r} is not one of {COEF_INITS}")
        if basis not in basis_lib.BASES:
            raise ValueError(f"KANLinear: unknown basis {basis!r}; known: {sorted(basis_lib.BASES)}")
        if "den_coef" in basis_params or "num_coef" in basis_params:
            raise ValueError("KANLinear: num_coef / den_coef are learned parameters of the rational layers; "
                             "set their sizes with degree, den_degree (and num_groups)")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"KANLinear: num_groups={num_groups!r} must be a positive integer")
        if "degree" in basis_lib.BASES[basis].defaults:
            basis_params["degree"] = degree
        # Stored as a hashable tuple: NNX graph definitions are hashed as jit cache keys.
        self.basis_items = tuple(sorted(
            (k, basis_lib.freeze(v)) for k, v in basis_lib.resolve_params(basis, **basis_params).items()))
        self.in_features, self.out_features = in_features, out_features
        self.basis, self.domain, self.base = basis, domain, base
        self.dtype, self.param_dtype, self.basis_dtype = dtype, param_dtype, basis_dtype
        self.den_degree = den_degree if basis in ("rational", "group_rational") else 0
        self.num_groups = min(num_groups, in_features) if basis == "group_rational" else 0
        self.axes = tuple(axes)
        if chunks is not None and (not isinstance(chunks, int) or chunks < 1):
            raise ValueError(f"KANLinear: chunks={chunks!r} must be a positive int or None")
        self.recompute, self.chunks = bool(recompute), chunks
        self.interval = tuple(float(v) for v in basis_lib.BASES[basis].interval(**self.basis_params))
        self.center = center
        self.active, self.offsets, self.scales = basis_lib.column_layout(basis, self.basis_items, domain, center)
        if not self.active:
            raise ValueError(f"KANLinear: basis {basis!r} with {dict(self.basis_items)} and center={center!r} has no "
                             "column that varies on its interval (a constant is all it has, and centring removes "
                             "it); raise the degree or use center='none'")
        in_axis, out_axis = self.axes

        def param(value, names):
            return nnx.Param(value, out_sharding=names, eager_sharding=False)

        if self.num_groups:  # every group starts as the identity, the function _init_coef assumes
            a, b = basis_lib.identity_rational(self.basis_params["degree"], self.den_degree)
            self.num_coef = param(jnp.tile(jnp.asarray(a, param_dtype), (self.num_groups, 1)), (None, None))
            self.den_coef = param(jnp.tile(jnp.asarray(b, param_dtype), (self.num_groups, 1)), (None, None))
        self.input_scale = param(jnp.ones((in_features,), param_dtype), (in_axis,)) if input_scale else None
        kan_share = 0.5 if base else 1.0
        self.coef = param(self._init_coef(rngs.params(), kan_share * init_scale ** 2, coef_init),
                          (in_axis, "basis", out_axis))
        if base:
            act = _silu_numpy if base == "silu" else (lambda v: v)
            base_std = init_scale * math.sqrt(0.5 / (in_features * float(_GH_WEIGHTS @ act(_GH_NODES) ** 2)))
            self.base_kernel = param(
                base_std * jax.random.normal(rngs.params(), (in_features, out_features), param_dtype),
                (in_axis, out_axis))
        if use_bias:
            self.bias = param(jnp.zeros((out_features,), param_dtype), (out_axis,))
        else:
            self.bias = None
        if self.den_degree and not self.num_groups:
            # Small random start: |Σ b x^j| has zero gradient at b = 0, which would freeze it.
            self.den_coef = param(
                0.1 * jax.random.normal(rngs.params(), (in_features, self.den_degree), param_dtype),
                (in_axis, None))

    @property
    def basis_params(self) -> dict:
        """Resolved keyword parameters of the basis (degree, grid, alpha, …)."""
        return dict(self.basis_items)

    # ----------------------------------------------------------------- forward

    def features(self, x: jax.Array, arrays: dict | None = None) -> jax.Array:
        """(…, i) → (…, i, K) normalised basis values, in basis_dtype.

        arrays: the learned basis arrays (`basis_arrays()`: input_scale, num_coef, den_coef) to use
        instead of the layer's own parameters (the recomputed path passes them in explicitly)."""
        arrays = self.basis_arrays() if arrays is None else arrays
        x = x.astype(self.basis_dtype)
        if "input_scale" in arrays:
            x = x * arrays["input_scale"].astype(self.basis_dtype)
        return self.features_of_squashed(basis_lib.squash(x, self.domain, jnp), arrays)

    def basis_arrays(self) -> dict:
        """The layer's learned arrays the basis expansion reads besides coef (a pytree: the recomputed
        path differentiates through them as explicit arguments)."""
        out = {}
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale[...]
        if self.num_groups:
            out["num_coef"] = self.num_coef[...]
        if self.den_degree:
            out["den_coef"] = self.den_coef[...]
        return out

    def features_of_squashed(self, u: jax.Array, arrays: dict | None = None) -> jax.Array:
        """Same as `features`, from the already squashed input u (…, i)."""
        lo, hi = self.interval
        t = basis_lib.to_interval(u.astype(self.basis_dtype), lo, hi, self.domain)
        params = dict(self.basis_params)
        arrays = self.basis_arrays() if arrays is None else arrays
        if self.num_groups:  # each feature gets its group's rational
            idx = basis_lib.group_index(self.in_features, self.num_groups)
            params["num_coef"] = arrays["num_coef"].astype(self.basis_dtype)[idx]
            params["den_coef"] = arrays["den_coef"].astype(self.basis_dtype)[idx]
        elif self.den_degree:
            params["den_coef"] = arrays["den_coef"].astype(self.basis_dtype)
        phi = basis_lib.expand(self.basis, t, **params)
        if len(self.active) != phi.shape[-1]:
            lo, hi = self.active[0], self.active[-1] + 1
            # Contiguous columns (the usual case: the constant one dropped) as a slice: indexing with a
            # list is a gather, which XLA:CPU keeps as a gather inside the chunk loops (and a scatter
            # in the backward pass).
            phi = phi[..., lo:hi] if self.active == tuple(range(lo, hi)) else phi[..., list(self.active)]
        if self.center != "none":
            phi = phi - jnp.asarray(self.offsets, self.basis_dtype)
        return phi * jnp.asarray(self.scales, self.basis_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._add_base_and_bias(x, self._kan_term(x, self.coef[...]))

    def _compute_dtype(self, x: jax.Array):
        return self.dtype or jnp.result_type(x.dtype, jnp.float32 if
                                             not jnp.issubdtype(x.dtype, jnp.floating) else x.dtype)

    def _kan_term(self, x: jax.Array, coef: jax.Array) -> jax.Array:
        """(…, i) → (…, o'): the expansion of x contracted with coef (i, K, o') (this layer's own coef,
        or several layers' concatenated along o' by `apply_shared`)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLinear expects input (..., {self.in_features}), got {x.shape}")
        dtype = self._compute_dtype(x)
        # coef enters in param_dtype and is cast inside: the gradients of the chunks are summed in it.
        arrays = self.basis_arrays()
        contract = functools.partial(self._expand_contract, dtype=dtype)
        if self.recompute:
            chunks = self.chunks or recompute_lib.chunk_count(x.shape, coef.shape[1])
            return recompute_lib.rowwise_recomputed(contract, x, coef, arrays, chunks=chunks)
        return contract(x, coef, arrays)

    def _add_base_and_bias(self, x: jax.Array, y: jax.Array) -> jax.Array:
        dtype = self._compute_dtype(x)
        if self.base:
            xb = x.astype(dtype)
            xb = jax.nn.silu(xb) if self.base == "silu" else xb
            y = y + dense(xb, self.base_kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y

    def _expand_contract(self, x: jax.Array, coef: jax.Array, arrays: dict, *, dtype) -> jax.Array:
        """(…, i) → (…, o): the basis expansion and its one matmul with coef (i, K, o), both cast
        to `dtype`; a pure function of its arguments (the layer's attributes it reads are static)."""
        coef = coef.astype(dtype)
        phi = self.features(x, arrays).astype(dtype)
        n_in, n_cols, n_out = coef.shape
        # One matmul over the flattened (input, basis) axis; never a vmap of the contraction.
        return dense(phi.reshape(x.shape[:-1] + (n_in * n_cols,)), coef.reshape(n_in * n_cols, n_out))

    def expansion_key(self) -> tuple | None:
        """What this layer's basis expansion depends on besides its input, or None when it reads learned
        arrays of its own (input_scale, rational coefficients): layers with equal keys expand an input
        alike, so `apply_shared` computes the expansion once for all of them."""
        if self.basis_arrays():
            return None
        return (self.in_features, self.basis, self.basis_items, self.domain, self.center, self.dtype,
                self.basis_dtype, self.param_dtype, self.recompute, self.chunks)

    @staticmethod
    def apply_shared(layers: Sequence[KANLinear], x: jax.Array) -> list[jax.Array]:
        """[layer(x) for layer in layers], with one basis expansion and one matmul for all of them when
        their `expansion_key`s are equal (q, k, v of one block; gate and up): the contraction runs
        against their coefficients concatenated along the output axis, then splits. The values are
        each layer's own (the same products; tests/kan/test_shared_expansion.py); what is saved is
        the expansion's elementwise work and its backward pass, once per extra layer
        (benchmarks/results/perf/train_step.md)."""
        key = layers[0].expansion_key() if layers else None
        if len(layers) < 2 or key is None or any(layer.expansion_key() != key for layer in layers[1:]):
            return [layer(x) for layer in layers]
        coef = jnp.concatenate([layer.coef[...] for layer in layers], axis=-1)
        y = layers[0]._kan_term(x, coef)
        cuts = np.cumsum([layer.out_features for layer in layers])[:-1].tolist()
        return [layer._add_base_and_bias(x, part) for layer, part in zip(layers, jnp.split(y, cuts, axis=-1))]

    # ----------------------------------------------------------------- helpers

    def _init_coef(self, key, out_var: float, how: str) -> jax.Array:
        """(in, K, out) coefficients whose output variance is `out_var` for N(0, 1) inputs."""
        lo, hi = self.interval
        phi = self._features_numpy(  # (nodes, K) at Gauss-Hermite nodes of N(0, 1)
            basis_lib.to_interval(basis_lib.squash_normal(_GH_NODES, self.domain), lo, hi, self.domain))
        n_in, n_cols, n_out = self.in_features, len(self.active), self.out_features
        if how == "random":  # Var = in · std² · Σ_k E[(s_k B_k)²]
            std = math.sqrt(out_var / (n_in * float(_GH_WEIGHTS @ np.sum(phi ** 2, axis=-1))))
            return std * jax.random.normal(key, (n_in, n_cols, n_out), self.param_dtype)
        a = _identity_coefficients(self, exact=False)  # Var = in · std² · E[(Σ_k a_k s_k B_k)²]
        std = math.sqrt(out_var / (n_in * float(_GH_WEIGHTS @ (phi @ a) ** 2)))
        w = std * jax.random.normal(key, (n_in, 1, n_out), self.param_dtype)
        return w * jnp.asarray(np.asarray(a)[None, :, None], self.param_dtype)  # numpy indexing: no eager op

    def _features_numpy(self, t: np.ndarray) -> np.ndarray:
        """(n,) points already in the basis' coordinates → (n, K) normalised columns, float64.

        The rational denominator is left out (Q = 1): it is O(1) at init and this is only used
        for constants. A group rational is the identity every group starts as (its default)."""
        phi = basis_lib.expand_numpy(self.basis, t, **self.basis_params)[:, list(self.active)]
        return (phi - np.asarray(self.offsets)) * np.asarray(self.scales)

    @classmethod
    def from_linear(
        cls,
        kernel: jax.Array | np.ndarray,
        bias: jax.Array | np.ndarray | None = None,
        *,
        basis: str = "chebyshev2",
        degree: int = 2,
        domain: str = "none",
        **kwargs,
    ) -> KANLinear:
        """A KAN layer computing `x @ kernel + bias`, kernel of shape (in, out); no RNG needed.

        With `domain="none"` and a polynomial family whose span holds the affine functions
        (constant and degree-1 term: every family at degree ≥ 1, Fibonacci at degree ≥ 2), the
        result is exact: coef[i, k, o] = a_k · kernel[i, o] where Σ_k a_k s_k B_k(x) = x.
        With a squashing domain the same construction gives squash(x) @ kernel + bias, which
        equals the linear map only for small inputs (the drift is measured, not hidden).
        """
        kernel = np.asarray(kernel, np.float64)
        if kernel.ndim != 2:
            raise ValueError(f"from_linear: kernel must be (in, out), got shape {kernel.shape}")
        n_in, n_out = kernel.shape
        if bias is not None and np.shape(bias) != (n_out,):
            raise ValueError(f"from_linear: bias must be ({n_out},), got shape {np.shape(bias)}")
        kwargs.setdefault("use_bias", bias is not None)
        if bias is not None and not kwargs["use_bias"]:
            raise ValueError("from_linear: a bias was given but use_bias=False")
        layer = cls(n_in, n_out, basis=basis, degree=degree, domain=domain, rngs=nnx.Rngs(0), **kwargs)
        if layer.base or layer.basis == "rational":
            raise ValueError("from_linear: needs base=None and a non-rational basis")
        a = _identity_coefficients(layer)  # (K,)
        coef = a[None, :, None] * kernel[:, None, :]
        layer.coef[...] = jnp.asarray(coef, layer.param_dtype)
        if bias is not None:
            layer.bias[...] = jnp.asarray(bias, layer.param_dtype)
        return layer


def _identity_coefficients(layer: KANLinear, exact: bool = True) -> np.ndarray:
    """a (K,) with Σ_k a_k s_k B_k(t) = u, u the squashed input in [-1, 1]; with `exact`, raises
    unless the fit is exact (else the least-squares fit, e.g. for Gaussian RBFs)."""
    u = np.linspace(-1.0, 1.0, 257)
    lo, hi = layer.interval
    t = basis_lib.to_interval(u, lo, hi, layer.domain)
    phi = layer._features_numpy(t)  # (n, K)
    a, *_ = np.linalg.lstsq(phi, u, rcond=None)
    if not exact:
        return a
    err = np.max(np.abs(phi @ a - u))
    # Exact on [-1, 1] is exact everywhere only for polynomials (B-splines vanish off their grid) and
    # for the group rational, which starts as the identity itself.
    everywhere = basis_lib.BASES[layer.basis].polynomial or layer.basis == "group_rational"
    unbounded = layer.domain == "none" and not everywhere
    if err > 1e-7 or unbounded:
        raise ValueError(
            f"from_linear: basis {layer.basis!r} with {layer.basis_params} cannot represent the "
            f"identity exactly (max error {err:.2e}); use a polynomial family with a constant "
            "and a degree-1 term (degree >= 1; fibonacci needs degree >= 2)")
    return a


def _silu_numpy(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def count_params(module: nnx.Module) -> int:
    """Number of scalar parameters (nnx.Param) in a module; works on abstract (eval_shape) ones."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return int(sum(math.prod(leaf.shape) for leaf in leaves))


def kan_param_count(in_features: int, out_features: int, **kan_kwargs) -> int:
    """Parameters of a KANLinear of this shape, from shapes only (no initialization)."""
    layer = nnx.eval_shape(lambda: KANLinear(in_features, out_features, rngs=nnx.Rngs(0), **kan_kwargs))
    return count_params(layer)


def matched_width(in_features: int, out_features: int, **kan_kwargs) -> int:
    """Output width at which a KANLinear(in, width) has the parameters of nnx.Linear(in, out).

    The KAN count is affine in the width, so two shape-only counts give it exactly.
    `use_bias` applies to both layers (default True).
    """
    use_bias = kan_kwargs.get("use_bias", True)
    target = in_features * out_features + (out_features if use_bias else 0)
    at1 = kan_param_count(in_features, 1, **kan_kwargs)
    at2 = kan_param_count(in_features, 2, **kan_kwargs)
    per_out, fixed = at2 - at1, 2 * at1 - at2
    return max(1, round((target - fixed) / per_out))
