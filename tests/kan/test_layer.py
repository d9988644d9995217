"""KANLinear: shapes, exact conversion from linear layers, init scale, precision, parameter matching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan import basis as basis_lib
from kanjax.kan.layer import KANLinear, count_params, kan_param_count, matched_width

FAMILIES = sorted(basis_lib.BASES)
POLYNOMIALS = sorted(n for n, b in basis_lib.BASES.items() if b.polynomial)


def _normal(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_any_leading_dims_jit_and_grad(family):
    layer = KANLinear(6, 5, basis=family, base="silu", rngs=nnx.Rngs(0))
    x3 = _normal((2, 3, 6))
    y3 = layer(x3)
    assert layer(x3[0, 0]).shape == (5,)
    assert layer(x3[0]).shape == (3, 5)
    assert y3.shape == (2, 3, 5)
    # The same function whatever the leading dims.
    np.testing.assert_allclose(layer(x3.reshape(6, 6)).reshape(2, 3, 5), y3, rtol=1e-6, atol=1e-6)
    graphdef, state = nnx.split(layer)
    y_jit = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x3)
    np.testing.assert_allclose(y_jit, y3, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x3) ** 2))(state)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"{family}: no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("family", POLYNOMIALS)
def test_from_linear_is_exact(family):
    w = np.asarray(_normal((12, 7), 1)) / np.sqrt(12)
    b = np.asarray(_normal((7,), 2))
    layer = KANLinear.from_linear(w, b, basis=family, degree=3)
    x = _normal((4, 9, 12), 3) * 2.0
    np.testing.assert_allclose(layer(x), x @ w + b, atol=1e-5, rtol=0)


def test_from_linear_rejects_bases_without_affine_span():
    w = np.ones((3, 2), np.float32)
    for family, kw in (("rbf", {}), ("bspline", {}), ("fibonacci", {"degree": 1, "center": "none"})):
        with pytest.raises(ValueError, match="cannot represent"):
            KANLinear.from_linear(w, None, basis=family, **kw)
    with pytest.raises(ValueError, match="has no column that varies"):  # F_1 = 1 centred is 0
        KANLinear.from_linear(w, None, basis="fibonacci", degree=1)
    with pytest.raises(ValueError, match="kernel must be"):
        KANLinear.from_linear(np.ones(3), None)
    with pytest.raises(ValueError, match=r"bias must be \(2,\)"):
        KANLinear.from_linear(w, np.ones(3))


def test_from_linear_with_tanh_domain_is_linear_in_tanh():
    w = np.asarray(_normal((8, 4), 4))
    layer = KANLinear.from_linear(w, None, basis="chebyshev2", domain="tanh")
    x = _normal((16, 8), 5)
    np.testing.assert_allclose(layer(x), jnp.tanh(x) @ w, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("base", [None, "silu"])
@pytest.mark.parametrize("coef_init", ["linear", "random"])
def test_init_output_std_matches_linear(family, base, coef_init):
    n_in, n_out = 256, 256
    x = _normal((2048, n_in), 6)
    ref = float(jnp.std(nnx.Linear(n_in, n_out, rngs=nnx.Rngs(1))(x)))
    layer = KANLinear(n_in, n_out, basis=family, base=base, coef_init=coef_init, rngs=nnx.Rngs(1))
    std = float(jnp.std(layer(x)))
    assert 0.8 * ref <= std <= 1.25 * ref, (family, std, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_coef_init_starts_as_a_linear_map_of_the_squashed_input(family):
    """coef_init="linear": y = tanh(x) @ W for one random W (exactly for families whose span holds
    u on [-1, 1]: polynomials and B-splines; least squares for RBFs), and no token-independent part;
    "random" puts most of the output into a constant (the same vector for every input)."""
    x = _normal((512, 16), 8) * 1.5
    u = np.asarray(jnp.tanh(x), np.float64)
    layer = KANLinear(16, 12, basis=family, coef_init="linear", rngs=nnx.Rngs(3))
    y = np.asarray(layer(x), np.float64)
    w, *_ = np.linalg.lstsq(u, y, rcond=None)
    rel = np.linalg.norm(u @ w - y) / np.linalg.norm(y)
    exact = basis_lib.BASES[family].polynomial or family == "bspline"
    assert rel < (1e-5 if exact else 0.1), (family, rel)

    def constant_share(out):
        return float(np.sum(out.mean(0) ** 2) / np.mean(np.sum(out ** 2, axis=1)))

    assert constant_share(y) < 0.05
    rand = np.asarray(KANLinear(16, 12, basis="chebyshev2", coef_init="random", rngs=nnx.Rngs(3))(x), np.float64)
    assert constant_share(rand) > 0.3


def _finite_tree(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


# The residual branch silu(x) @ W is unbounded like any linear layer: with |x| = 1e4 its float16
# weight gradient (a sum over the batch of 1e4-sized terms) overflows, which is what loss scaling
# in the train step is for. The KAN path itself is bounded and is tested in every dtype.
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("degree", [2, 8])
@pytest.mark.parametrize("base", [None, "silu"])
def test_finite_values_and_grads_for_huge_inputs_in_every_dtype(family, degree, base):
    x = jnp.linspace(-1e4, 1e4, 8 * 41).reshape(41, 8)
    x = x.at[0, :4].set(jnp.array([-1e4, -1.0, 0.0, 1e4]))
    dtypes = (jnp.float32, jnp.bfloat16) + ((jnp.float16,) if base is None else ())
    for dtype in dtypes:
        layer = KANLinear(8, 6, basis=family, degree=degree, base=base, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)

        def loss(s, x):
            return jnp.sum(nnx.merge(graphdef, s)(x).astype(jnp.float32))

        y = nnx.merge(graphdef, state)(x.astype(dtype))
        assert y.dtype == dtype
        assert _finite_tree(y), (family, degree, dtype)
        gs, gx = jax.grad(loss, argnums=(0, 1))(state, x.astype(dtype))
        assert _finite_tree(gs) and _finite_tree(gx), (family, degree, dtype)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("degree", [2, 8])
def test_float16_matches_float32(family, degree):
    x = _normal((64, 96), 7)
    ref = KANLinear(96, 80, basis=family, degree=degree, base="silu", rngs=nnx.Rngs(2))(x)
    half = KANLinear(96, 80, basis=family, degree=degree, base="silu", dtype=jnp.float16,
                     rngs=nnx.Rngs(2))(x.astype(jnp.float16))
    err = float(jnp.linalg.norm(half.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert err <= 2e-2, (family, degree, err)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("base", [None, "silu"])
def test_matched_width_hits_linear_param_count(family, base):
    n_in, n_out = 576, 1536
    width = matched_width(n_in, n_out, basis=family, base=base)
    linear = count_params(nnx.eval_shape(lambda: nnx.Linear(n_in, n_out, rngs=nnx.Rngs(0))))
    kan = kan_param_count(n_in, width, basis=family, base=base)
    assert abs(kan - linear) / linear <= 0.01, (family, width, kan, linear)


def test_count_params_counts_every_parameter():
    layer = KANLinear(10, 4, basis="rational", degree=3, den_degree=2, base="linear", center="none",
                      rngs=nnx.Rngs(0))
    # coef (10, 4, 4) + base (10, 4) + bias (4) + denominator (10, 2); centred, the constant column drops
    assert count_params(layer) == 10 * 4 * 4 + 10 * 4 + 4 + 10 * 2
    layer = KANLinear(10, 4, basis="bspline", grid=5, order=3, use_bias=False, rngs=nnx.Rngs(0))
    assert count_params(layer) == 10 * 8 * 4


def test_logical_axes_on_parameters():
    layer = KANLinear(4, 3, base="silu", axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
    assert tuple(specs["coef"].get_value()) == ("embed", "basis", "mlp")
    assert tuple(specs["base_kernel"].get_value()) == ("embed", "mlp")
    assert tuple(specs["bias"].get_value()) == ("mlp",)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="domain='sigmoid'"):
        KANLinear(3, 2, domain="sigmoid", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown basis 'wavelet'"):
        KANLinear(3, 2, basis="wavelet", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        KANLinear(3, 2, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))


@pytest.mark.parametrize("family", FAMILIES)
def test_centred_columns(family):
    """center="zero": every column vanishes at input 0, so the constant column drops out and an edge
    function is 0 at 0; center="gauss": every column has mean 0 for N(0, 1) inputs. The columns keep
    max |column| = 1 on the interval, and from_linear stays exact (domain "none")."""
    from kanjax.kan.basis_terms import GH_NODES as _GH_NODES
    from kanjax.kan.basis_terms import GH_WEIGHTS as _GH_WEIGHTS

    zero = KANLinear(5, 3, basis=family, center="zero", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(zero.features(jnp.zeros((2, 5))), 0.0, atol=1e-6)
    assert len(zero.active) <= len(KANLinear(5, 3, basis=family, rngs=nnx.Rngs(0)).active)
    gauss = KANLinear(5, 3, basis=family, center="gauss", rngs=nnx.Rngs(0))
    if family != "rational":  # its learned denominator is not in the static centre
        nodes = jnp.asarray(np.repeat(_GH_NODES[:, None], 5, axis=1), jnp.float32)
        phi = np.asarray(gauss.features(nodes))[:, 0, :]  # (nodes, K)
        np.testing.assert_allclose(_GH_WEIGHTS @ phi, 0.0, atol=1e-5)
    grid = jnp.repeat(jnp.linspace(-30.0, 30.0, 2001)[:, None], 5, axis=1)
    assert np.max(np.abs(np.asarray(gauss.features(grid)))) <= 1.0 + 1e-5
    if family in POLYNOMIALS:
        w = np.asarray(_normal((6, 4), 1))
        layer = KANLinear.from_linear(w, None, basis=family, degree=3, center="zero")
        x = _normal((8, 6), 2)
        np.testing.assert_allclose(layer(x), x @ w, atol=1e-4)
