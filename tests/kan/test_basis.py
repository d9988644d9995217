"""kanjax.kan.basis against independent references (scipy.special, scipy BSpline, closed forms)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
from scipy.interpolate import BSpline

from kanjax.kan.basis import expand
from kanjax.kan.basis_terms import BASES, expand_numpy, n_basis, resolve_params

ALL = sorted(BASES)
MAX_DEG = 8
NPTS = 257


def _points(lo, hi, n=NPTS):
    """float32 sample points and the same values in float64 for the reference."""
    x32 = np.linspace(lo, hi, n, dtype=np.float32)
    return x32, x32.astype(np.float64)


def _assert_columns(ours, ref_fn, x64, what):
    """Column n of ``ours`` matches ref_fn(n, x64) to 1e-5 relative to max(1, max|ref|)."""
    assert ours.shape == x64.shape + (MAX_DEG + 1,)
    for n in range(MAX_DEG + 1):
        ref = ref_fn(n, x64)
        err = np.max(np.abs(np.asarray(ours[:, n], np.float64) - ref))
        tol = 1e-5 * max(1.0, np.max(np.abs(ref)))
        assert err <= tol, f"{what} degree {n}: max err {err:.3g} > {tol:.3g}"


# ------------------------------------------------------------------ polynomials

def _bessel_ref(n, x):
    return sum(math.factorial(n + k) / (math.factorial(n - k) * math.factorial(k)) * (x / 2) ** k
               for k in range(n + 1))


def _fibonacci_ref(n, x):
    if n == 0:
        return 0 * x
    return sum(math.comb(n - k - 1, k) * x ** (n - 2 * k - 1) for k in range((n - 1) // 2 + 1))


def _lucas_ref(n, x):
    if n == 0:
        return 2 + 0 * x
    return sum(n / (n - k) * math.comb(n - k, k) * x ** (n - 2 * k) for k in range(n // 2 + 1))


SCIPY_CASES = [
    ("chebyshev", {}, (-1, 1), lambda n, x: sp.eval_chebyt(n, x)),
    ("chebyshev2", {}, (-1, 1), lambda n, x: sp.eval_chebyu(n, x)),
    ("legendre", {}, (-1, 1), lambda n, x: sp.eval_legendre(n, x)),
    ("hermite", {}, (-3, 3), lambda n, x: sp.eval_hermite(n, x)),
    *[("laguerre", {"alpha": a}, (0, 10), lambda n, x, a=a: sp.eval_genlaguerre(n, a, x))
      for a in (0.0, -0.5, 1.0, 2.5)],
    *[("jacobi", {"alpha": a, "beta": b}, (-1, 1),
       lambda n, x, a=a, b=b: sp.eval_jacobi(n, a, b, x))
      for a, b in ((0.0, 0.0), (1.0, 1.0), (0.5, -0.5), (2.0, 0.3), (-0.5, 1.5))],
    *[("gegenbauer", {"alpha": a}, (-1, 1), lambda n, x, a=a: sp.eval_gegenbauer(n, a, x))
      for a in (-0.3, 0.5, 1.5, 3.0)],
    ("bessel", {}, (-1, 1), _bessel_ref),
    ("fibonacci", {}, (-2, 2), _fibonacci_ref),
    ("lucas", {}, (-2, 2), _lucas_ref),
]


@pytest.mark.parametrize("name,params,domain,ref", SCIPY_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in SCIPY_CASES])
def test_polynomials_match_reference(name, params, domain, ref):
    x32, x64 = _points(*domain)
    ours = np.asarray(expand(name, jnp.asarray(x32), degree=MAX_DEG, **params))
    assert ours.dtype == np.float32
    _assert_columns(ours, ref, x64, name)
    # The float64 numpy path is held to the same reference (much tighter in practice).
    _assert_columns(expand_numpy(name, x64, degree=MAX_DEG, **params), ref, x64, name + " numpy")


@pytest.mark.parametrize("name", [n for n in ALL if BASES[n].polynomial])
def test_lower_degree_is_prefix(name):
    # All degrees through the (cheap) float64 path; degree 0 (a single column) through jax.
    x = np.linspace(-1, 1, 33)
    full = expand_numpy(name, x, degree=MAX_DEG)
    for d in range(MAX_DEG + 1):
        assert n_basis(name, degree=d) == d + 1
        np.testing.assert_allclose(expand_numpy(name, x, degree=d), full[:, : d + 1], rtol=1e-12)
    part = np.asarray(expand(name, jnp.asarray(x, jnp.float32), degree=0))
    assert part.shape == (33, 1)
    np.testing.assert_allclose(part, full[:, :1], rtol=1e-6)


def test_polynomial_flags_and_intervals():
    assert len(BASES) == 14
    assert sorted(n for n in ALL if BASES[n].polynomial) == sorted(
        ["chebyshev", "chebyshev2", "legendre", "hermite", "laguerre", "jacobi",
         "gegenbauer", "bessel", "fibonacci", "lucas"])
    interval = {n: BASES[n].interval(**resolve_params(n)) for n in ALL}
    assert interval["hermite"] == (-2.0, 2.0) and interval["laguerre"] == (0.0, 4.0)
    assert interval["bspline"] == interval["rbf"] == interval["rational"] == interval["group_rational"] == (-1.0, 1.0)
    assert BASES["bspline"].interval(**resolve_params("bspline", grid_range=(0, 3))) == (0.0, 3.0)


# -------------------------------------------------------------------- B-splines

BSPLINE_CASES = [(1, 0), (5, 0), (4, 1), (5, 3), (7, 2), (3, 5)]


def _knots(grid, order, lo, hi):
    h = (hi - lo) / grid
    return lo + (np.arange(grid + 2 * order + 1) - order) * h


def _off_knots(x, t, h):
    # float32 rounding can put a point within eps of a knot on the other side,
    # which matters for the discontinuous order-0 case only; keep clear of knots.
    return x[np.min(np.abs(x[:, None] - t[None, :]), axis=1) > 1e-3 * h]


@pytest.mark.parametrize("grid,order", BSPLINE_CASES)
@pytest.mark.parametrize("grid_range", [(-1.0, 1.0), (-2.0, 3.0)])
def test_bspline_matches_scipy(grid, order, grid_range):
    lo, hi = grid_range
    t = _knots(grid, order, lo, hi)
    h = (hi - lo) / grid
    k = grid + order
    kw = dict(grid=grid, order=order, grid_range=grid_range)
    assert n_basis("bspline", **kw) == k

    # Inside [lo, hi): scipy's BSpline on the very same knot vector, all K bases at once.
    inside = _off_knots(np.linspace(lo, hi, 400, endpoint=False).astype(np.float32), t, h)
    # Everywhere, including the extended knots and far outside: each basis is
    # scipy's basis element on its own k+2 knots, and zero off its support.
    around = _off_knots(np.linspace(t[0] - 2 * h, t[-1] + 2 * h, 600).astype(np.float32), t, h)
    ours = np.asarray(expand("bspline", jnp.asarray(np.concatenate([inside, around])), **kw),
                      np.float64)

    x64 = inside.astype(np.float64)
    ref = BSpline(t, np.eye(k), order, extrapolate=False)(x64)
    assert np.max(np.abs(ours[: len(inside)] - ref)) <= 1e-6
    np.testing.assert_allclose(expand_numpy("bspline", x64, **kw), ref, atol=1e-12)

    x64 = around.astype(np.float64)
    ref = np.stack([np.nan_to_num(BSpline.basis_element(t[j:j + order + 2],
                                                        extrapolate=False)(x64))
                    for j in range(k)], axis=-1)
    assert np.max(np.abs(ours[len(inside):] - ref)) <= 1e-6
    np.testing.assert_allclose(expand_numpy("bspline", x64, **kw), ref, atol=1e-12)


@pytest.mark.parametrize("grid,order", BSPLINE_CASES)
def test_bspline_partition_of_unity(grid, order):
    lo, hi = -1.5, 2.0
    x = np.linspace(lo, hi, 301, endpoint=False, dtype=np.float32)
    x = np.append(x, np.nextafter(np.float32(hi), np.float32(lo)))  # last float below hi
    kw = dict(grid=grid, order=order, grid_range=(lo, hi))
    out = np.asarray(expand("bspline", jnp.asarray(np.append(x, [-1e4, 1e4])), **kw))
    np.testing.assert_allclose(out[:-2].sum(-1), 1.0, atol=1e-6)
    assert np.all(out[-2:] == 0)  # far outside the extended knots every basis vanishes
    x64 = np.append(x[:-1].astype(np.float64), np.nextafter(hi, lo))
    np.testing.assert_allclose(expand_numpy("bspline", x64, **kw).sum(-1), 1.0, atol=1e-12)


# ------------------------------------------------------------------ RBF, rational

@pytest.mark.parametrize("kw,centers,width", [
    ({}, np.linspace(-1, 1, 8), 2 / 7),
    ({"num_centers": 4, "grid_range": (0.0, 3.0)}, np.linspace(0, 3, 4), 1.0),
    ({"centers": [-0.7, 0.1, 0.9], "width": 0.3}, np.array([-0.7, 0.1, 0.9]), 0.3),
    ({"centers": [0.2, 0.5]}, np.array([0.2, 0.5]), 2.0),
    ({"num_centers": 1}, np.array([-1.0]), 2.0),
])
def test_rbf_matches_numpy(kw, centers, width):
    x32, x64 = _points(-3, 3)
    ref = np.exp(-(((x64[:, None] - centers[None, :]) / width) ** 2))
    assert n_basis("rbf", **kw) == len(centers)
    np.testing.assert_allclose(np.asarray(expand("rbf", jnp.asarray(x32), **kw)), ref, atol=1e-6)
    np.testing.assert_allclose(expand_numpy("rbf", x64, **kw), ref, atol=1e-13)


def _rational_ref(x, degree, b):
    num = x[..., None] ** np.arange(degree + 1)
    if b is None:
        return num
    q = 1 + np.abs(sum(b[..., j - 1] * x ** j for j in range(1, b.shape[-1] + 1)))
    return num / q[..., None]


@pytest.mark.parametrize("degree", [0, 3, 5])
@pytest.mark.parametrize("den", ["none", "shared", "per_feature"])
def test_rational_matches_numpy(degree, den):
    rng = np.random.default_rng(degree)
    x64 = rng.uniform(-2, 2, size=(16, 3))
    b = {"none": None, "shared": rng.normal(size=4),
         "per_feature": rng.normal(size=(3, 4))}[den]
    ref = _rational_ref(x64, degree, b)
    ours = np.asarray(expand("rational", jnp.asarray(x64, jnp.float32), degree=degree,
                             den_coef=None if b is None else jnp.asarray(b, jnp.float32)))
    assert ours.shape == (16, 3, degree + 1)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(expand_numpy("rational", x64, degree=degree, den_coef=b), ref,
                               rtol=1e-13, atol=1e-13)


def test_rational_per_feature_params_differ_per_feature():
    # Same x in every feature but different denominators: columns must differ by feature.
    b = jnp.array([[0.0], [1.0], [3.0]])
    out = np.asarray(expand("rational", jnp.full((2, 3), 0.5), den_coef=b))
    np.testing.assert_allclose(out[0, :, 1], 0.5 / (1 + np.abs(np.array([0.0, 1.0, 3.0]) * 0.5)),
                               rtol=1e-6)


def test_rational_den_coef_is_differentiable_under_jit():
    x = jnp.linspace(-1, 1, 12).reshape(4, 3)

    @jax.jit
    def loss(b):
        return expand("rational", x, degree=3, den_coef=b).sum()

    for b in (jnp.array([0.3, -0.2]), jnp.array([[0.3, -0.2], [0.1, 0.5], [-1.0, 0.0]])):
        g = jax.grad(loss)(b)
        assert g.shape == b.shape and np.all(np.isfinite(g)) and np.any(g != 0)
        # Central differences in float64 numpy as the reference.
        eps, gref = 1e-6, np.zeros(b.shape)
        bn = np.asarray(b, np.float64)
        for i in np.ndindex(b.shape):
            d = np.zeros(b.shape)
            d[i] = eps
            gref[i] = (expand_numpy("rational", x, den_coef=bn + d).sum()
                       - expand_numpy("rational", x, den_coef=bn - d).sum()) / (2 * eps)
        np.testing.assert_allclose(np.asarray(g), gref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------- generic behaviour

def _sample(name, shape, seed=0):
    lo, hi = BASES[name].interval(**resolve_params(name))
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, size=shape), jnp.float32)


@pytest.mark.parametrize("name", ALL)
def test_defaults_shapes_and_numpy_agreement(name):
    k = n_basis(name)
    assert k == BASES[name].size(**resolve_params(name)) >= 1
    for shape in [(), (24,), (4, 6), (2, 3, 4)]:
        x = _sample(name, shape)
        out = expand(name, x)
        assert out.shape == shape + (k,) and out.dtype == jnp.float32
        ref = expand_numpy(name, np.asarray(x, np.float64))
        assert ref.shape == shape + (k,) and ref.dtype == np.float64
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5,
                                   atol=1e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("name,params", [
    ("jacobi", {"degree": 6, "alpha": 2.0, "beta": 0.3}),
    ("laguerre", {"degree": 5, "alpha": 1.5}),
    ("bspline", {"grid": 7, "order": 2, "grid_range": (-2.0, 1.0)}),
    ("rbf", {"num_centers": 5, "width": 0.4}),
    ("rational", {"degree": 4, "den_coef": np.array([0.5, -1.0, 0.25])}),
])
def test_numpy_agreement_with_params(name, params):
    x = _sample(name, (64,), seed=1) * 1.3
    ours = np.asarray(expand(name, x, **params))
    ref = expand_numpy(name, np.asarray(x, np.float64), **params)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_dtypes():
    assert expand("legendre", jnp.arange(3)).dtype == jnp.float32
    assert expand("legendre", np.arange(3)).dtype == jnp.float32
    assert expand("bspline", jnp.zeros(3, jnp.bfloat16)).dtype == jnp.bfloat16
    assert expand("rational", jnp.zeros(3, jnp.bfloat16),
                  den_coef=jnp.ones(2, jnp.float32)).dtype == jnp.bfloat16
    assert expand("chebyshev", jnp.zeros((0, 3))).shape == (0, 3, 3)


@pytest.mark.parametrize("name", ALL)
def test_jit_and_derivatives(name):
    lo, hi = BASES[name].interval(**resolve_params(name))
    x = jnp.asarray(np.linspace(lo, hi, 23) + 0.0123, jnp.float32)
    # Gradients must be finite on [-1, 1] including its endpoints, and far
    # outside for the bounded families.
    pts = [-1.0, -0.5, 0.0, 0.5, 1.0] + ([] if BASES[name].polynomial else [-1e4, 1e4])

    @jax.jit
    def run(v, w):
        f = lambda s: expand(name, s)
        return f(v), jax.vmap(jax.jacfwd(f))(v), jax.grad(lambda u: f(u).sum())(w)

    val, jac, g = (np.asarray(a, np.float64) for a in run(x, jnp.array(pts)))
    np.testing.assert_allclose(val, np.asarray(expand(name, x)), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(g)), (name, g)
    # d(column)/dx per point against float64 central differences of expand_numpy.
    x64, eps = np.asarray(x, np.float64), 1e-6
    fd = (expand_numpy(name, x64 + eps) - expand_numpy(name, x64 - eps)) / (2 * eps)
    np.testing.assert_allclose(jac, fd, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(fd).max()))


def test_far_gradients_with_denominator():
    b = jnp.array([[0.5, -0.2], [1.0, 0.0]])
    g = jax.grad(lambda v: expand("rational", v, den_coef=b).sum())(jnp.array([[-1e4, 1e4],
                                                                               [1e4, 0.0]]))
    assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name,params,match", [
    ("chebyshevv", {}, r"unknown basis 'chebyshevv'.*chebyshev.*rational"),
    ("legendre", {"alpha": 1.0}, r"unknown keyword 'alpha'.*accepted: degree"),
    ("bspline", {"degree": 3}, r"unknown keyword 'degree'.*grid, order, grid_range"),
    ("legendre", {"degree": -1}, r"degree must be >= 0"),
    ("rational", {"degree": -2}, r"degree must be >= 0"),
    ("chebyshev", {"degree": 2.5}, r"degree must be an integer"),
    ("bspline", {"grid": 0}, r"grid must be >= 1"),
    ("bspline", {"order": -1}, r"order must be >= 0"),
    ("bspline", {"grid_range": (1.0, -1.0)}, r"grid_range"),
    ("rbf", {"width": 0.0}, r"width must be > 0"),
    ("rbf", {"num_centers": 0}, r"num_centers must be >= 1"),
    ("rbf", {"centers": [0.0, 1.0], "num_centers": 3}, r"num_centers contradicts"),
    ("jacobi", {"alpha": -1.0}, r"alpha must be > -1"),
    ("jacobi", {"beta": -2.0}, r"beta must be > -1"),
    ("laguerre", {"alpha": -1.5}, r"alpha must be > -1"),
    ("gegenbauer", {"alpha": -0.5}, r"alpha must be > -0.5"),
    ("gegenbauer", {"alpha": 0.0}, r"alpha must be != 0"),
    ("rational", {"den_coef": np.ones((2, 2, 2))}, r"den_coef must have shape"),
])
def test_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        resolve_params(name, **params)
    with pytest.raises(ValueError, match=match):
        expand(name, jnp.zeros(3), **params)


def test_per_feature_shape_mismatch():
    with pytest.raises(ValueError, match=r"den_coef.*x.shape\[-1\]"):
        expand("rational", jnp.zeros((2, 4)), den_coef=jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"den_coef.*x.shape\[-1\]"):
        expand("rational", jnp.zeros(()), den_coef=jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"den_coef.*x.shape\[-1\]"):
        expand_numpy("rational", np.zeros((2, 4)), den_coef=np.ones((3, 2)))


@pytest.mark.parametrize("name", ALL)
def test_resolve_params_is_idempotent(name):
    p = resolve_params(name)
    assert set(p) == set(BASES[name].defaults)
    assert resolve_params(name, **p) == p
    rbf = resolve_params("rbf", centers=np.array([0.0, 0.5, 1.0]))
    assert rbf["num_centers"] == 3 and resolve_params("rbf", **rbf) == rbf
