"""Group-rational activations (KAT's GR-KAN unit) and their least-squares fit to a fixed activation.

    φ_g(x) = P_g(x) / Q_g(x),   P_g(x) = Σ_{i=0..m} a_gi x^i,   Q_g(x) = 1 + Σ_{i=1..n} |b_gi| |x|^i

for the channels of group g (`kanjax.kan.basis_terms.group_index`: G contiguous blocks of channels). The
formula has one definition, `kanjax.basis_terms.safe_rational`, which the exported PyTorch code
runs too. It appears in two places:

* the basis family "group_rational" of `KANLinear` (a GR-KAN linear layer: the activation on the
  layer's inputs, then one matmul; every φ_g starts as the identity);
* `GroupRational` here, the activation alone, which the kanify strategy "activation" puts after a
  pretrained projection in place of the SiLU it removes (KAT's warm start of a pretrained ViT):
  every φ_g then starts as `silu_fit`, a least-squares fit of SiLU over `SILU_FIT_RANGE`
  (KANSpec activation_init="silu_fit"), or, with `residual=True`, is φ_g = SiLU + P_g/Q_g with
  P_g = 0 (init "zero"): exactly SiLU at step 0 (activation_init="silu_residual").

A rational (m, n) with this even denominator cannot follow SiLU's two asymptotes (x on the right,
0 on the left), so the fit is good only on a finite range: the range must cover the activations
it will see. `SILU_FIT_RANGE` covers every gate pre-activation of SmolLM2-135M measured on
WikiText-2 and tinyshakespeare (tests/test_group_rational.py measures it again on real text).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.kan import basis as basis_lib

# Gate pre-activations (x @ W_gate) of SmolLM2-135M, all 30 blocks, 24 windows of 256 tokens of
# WikiText-2 test / validation and tinyshakespeare: min -37.4 (block 28), max 52.8 (block 11).
SILU_FIT_RANGE = (-48.0, 64.0)
# The warm start's degrees: (9, 8) fits SiLU on SILU_FIT_RANGE to 1.9e-3 max (KAT's (5, 4): 0.24).
SILU_DEGREES = (9, 8)
INITS = ("silu", "identity", "zero")


@dataclasses.dataclass(frozen=True)
class RationalFit:
    """A least-squares fit P/Q ≈ f on [lo, hi]: coefficients (float64) and the fit's errors on its grid."""

    num_coef: np.ndarray  # (m + 1,) a_0..a_m
    den_coef: np.ndarray  # (n,) b_1..b_n (their signs are irrelevant: Q uses |b_i|)
    lo: float
    hi: float
    max_error: float  # max |P/Q - f| over the fit grid
    rms_error: float  # root mean square of P/Q - f over the fit grid

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return basis_lib.safe_rational(np.asarray(x, np.float64), np, self.num_coef, self.den_coef)


def silu_numpy(x: np.ndarray) -> np.ndarray:
    """SiLU in float64 without overflow: x·σ(x) = x / (1 + e^{-x}), written through e^{-|x|}."""
    return basis_lib.silu(np.asarray(x, np.float64), np)


def _residual_and_jacobian(p, zp, az, y, w):
    """Weighted r = w·(P/Q − y) and ∂r/∂p for p = (a_0..a_m, b_1..b_n); zp = z^i, az = |z|^j (fixed)."""
    a, b = p[: zp.shape[1]], p[zp.shape[1]:]
    num = zp @ a
    q = 1.0 + az @ np.abs(b)
    r = w * (num / q - y)
    sign = np.where(b < 0, -1.0, 1.0)  # d|b|/db, 1 at b = 0 as in safe_rational
    jac = w[:, None] * np.concatenate([zp / q[:, None], -(num / q ** 2)[:, None] * az * sign], axis=1)
    return r, jac


def _levenberg_marquardt(p, zp, az, y, w, max_nfev: int):
    """MINPACK's Levenberg-Marquardt (scipy, which jax already requires) on the true residual P/Q − f."""
    from scipy.optimize import least_squares

    out = least_squares(lambda q: _residual_and_jacobian(q, zp, az, y, w)[0], p,
                        jac=lambda q: _residual_and_jacobian(q, zp, az, y, w)[1], method="lm",
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=max_nfev)
    return out.x, 2.0 * float(out.cost)


def fit_rational(fn: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, degree: int, den_degree: int,
                 weight: Callable[[np.ndarray], np.ndarray] | None = None, num_points: int = 2001,
                 max_nfev: int = 3000) -> RationalFit:
    """Least-squares fit of the safe rational (degree, den_degree) to `fn` on a uniform grid over [lo, hi],
    minimising Σ weight(x)² (P/Q − f)² (weight None: 1).

    The fit runs in z = x / s, s = max(|lo|, |hi|) (powers of 50 would make it singular), from the
    linearised problem P(z) − f(z)·Q(z) = 0 solved by least squares, then Levenberg-Marquardt on the
    true residual P/Q − f; the coefficients are mapped back to x (a_i / s^i, b_i / s^i).
    Deterministic. The reported errors are unweighted, over the whole grid.
    """
    if not lo < hi:
        raise ValueError(f"fit_rational: need lo < hi, got [{lo}, {hi}]")
    s = float(max(abs(lo), abs(hi)))
    x = np.linspace(lo, hi, num_points)
    y = np.asarray(fn(x), np.float64)
    w = np.ones_like(x) if weight is None else np.asarray(weight(x), np.float64)
    z = x / s
    m, n = degree, den_degree
    zp, az = z[:, None] ** np.arange(m + 1), np.abs(z)[:, None] ** np.arange(1, n + 1)
    lin = w[:, None] * np.concatenate([zp, -y[:, None] * az], 1)
    p0 = np.linalg.lstsq(lin, w * y, rcond=None)[0]
    starts = [np.concatenate([p0[: m + 1], np.abs(p0[m + 1:])])]  # Q must stay >= 1: |c|
    poly = np.linalg.lstsq(lin[:, : m + 1], w * y, rcond=None)[0]  # the polynomial fit, Q = 1
    starts.append(np.concatenate([poly, np.zeros(n)]))
    p, _ = min((_levenberg_marquardt(p, zp, az, y, w, max_nfev) for p in starts), key=lambda pc: pc[1])
    a = p[: m + 1] / s ** np.arange(m + 1)
    b = p[m + 1:] / s ** np.arange(1, n + 1)
    err = basis_lib.safe_rational(x, np, a, b) - y
    return RationalFit(a, b, float(lo), float(hi), float(np.max(np.abs(err))), float(np.sqrt(np.mean(err ** 2))))


@functools.lru_cache(maxsize=32)
def silu_fit(degree: int = SILU_DEGREES[0], den_degree: int = SILU_DEGREES[1],
             lo: float = SILU_FIT_RANGE[0], hi: float = SILU_FIT_RANGE[1]) -> RationalFit:
    """The rational (degree, den_degree) closest to SiLU on [lo, hi] in least squares (cached)."""
    return fit_rational(silu_numpy, lo, hi, degree, den_degree)


def fit_errors(fit: RationalFit, x: np.ndarray, fn: Callable = silu_numpy) -> dict[str, float]:
    """Max and RMS of fit(x) − fn(x) over samples x (e.g. real activations), and how many fall
    outside the fit's range (where nothing bounds the error)."""
    x = np.asarray(x, np.float64).reshape(-1)
    err = fit(x) - fn(x)
    return {"max_error": float(np.max(np.abs(err))), "rms_error": float(np.sqrt(np.mean(err ** 2))),
            "outside_range": int(np.sum((x < fit.lo) | (x > fit.hi))), "min": float(x.min()), "max": float(x.max())}


def initial_coefficients(init: str, degree: int, den_degree: int) -> tuple[np.ndarray, np.ndarray]:
    """(a (m+1,), b (n,)) a group rational starts from: "silu" (`silu_fit`), "identity" (exact) or
    "zero" (P = 0, exactly; Q = the SiLU fit's denominator), the start of the residual form.

    Why Q starts at the fit's denominator, not 1: with P = 0, ∂φ/∂b = −P |x|^j / Q² is 0 whatever b,
    so b gets no gradient at step 0 in either case; a gets x^i / Q, so after one step P ≠ 0 and b
    learns (|b|'s derivative is 1 at 0 too, `safe_rational`). Q = 1 would make the residual a
    pure polynomial at first (a_9 x^9 ≈ 2e15·a_9 at |x| = 50); the fit's Q is ≈ 1 near 0 (1.12 at
    |x| = 1) and 2.8e4 at |x| = 50 at (9, 8), and keeps P/Q at most linear as |x| → ∞.
    """
    if init in ("silu", "zero"):
        fit = silu_fit(degree, den_degree)
        return (fit.num_coef if init == "silu" else np.zeros(degree + 1)), fit.den_coef
    if init == "identity":
        return basis_lib.identity_rational(degree, den_degree)
    raise ValueError(f"GroupRational: init={init!r} is not one of {INITS}")


class GroupRational(nnx.Module):
    """Learnable group-rational activation (…, features) → (…, features), evaluated in float32.

    Parameters num_coef (G, degree + 1) and den_coef (G, den_degree), G = min(num_groups,
    features); every group starts from the same `initial_coefficients(init, …)`. residual=True:
    φ_g = SiLU + P_g/Q_g (`basis_terms.group_rational(residual=True)`); with init="zero" it is
    SiLU exactly at step 0.
    """

    def __init__(self, features: int, *, num_groups: int = 8, degree: int = SILU_DEGREES[0],
                 den_degree: int = SILU_DEGREES[1], init: str = "silu", residual: bool = False,
                 param_dtype: Any = jnp.float32):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"GroupRational: num_groups={num_groups!r} must be a positive integer")
        if degree < 1 or den_degree < 0:
            raise ValueError(f"GroupRational: need degree >= 1 and den_degree >= 0, got ({degree}, {den_degree})")
        self.features, self.num_groups = features, min(num_groups, features)
        self.degree, self.den_degree, self.residual = degree, den_degree, bool(residual)
        a, b = initial_coefficients(init, degree, den_degree)
        g = self.num_groups
        self.num_coef = nnx.Param(jnp.tile(jnp.asarray(a, param_dtype), (g, 1)))
        self.den_coef = nnx.Param(jnp.tile(jnp.asarray(b, param_dtype), (g, 1)))

    def __call__(self, x):
        if x.shape[-1] != self.features:
            raise ValueError(f"GroupRational expects input (..., {self.features}), got {x.shape}")
        # float32 whatever the compute dtype: degree-9 powers of |x| ~ 50 lose everything in bf16.
        y = basis_lib.group_rational(x.astype(jnp.float32), self.num_coef[...].astype(jnp.float32),
                                     self.den_coef[...].astype(jnp.float32), jnp, residual=self.residual)
        return y.astype(x.dtype)
