"""Range refit (kanjax.kan.range_refit): the learned per-channel input scale, and the least-squares
transfer of a KAN layer's function onto a moved / rescaled basis, against independent numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan.layer import KANLinear
from kanjax.kan.range_refit import fit_input_scale, fit_mlp_input_scales, input_scale_from_batch, transfer
from kanjax.llama.kanify import kanify
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM


def _activations(n, d, seed=0, outliers=(1, 5)):
    """SmolLM2-like MLP inputs: most |x| ~ 0.1, heavy tails, a few channels 20x larger."""
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_t(3, size=(n, d))
    x[:, [o for o in outliers if o < d]] *= 20.0
    return x.astype(np.float32)


def _random_coef(layer, seed=1):
    layer.coef[...] = jax.random.normal(jax.random.key(seed), layer.coef.shape) / np.sqrt(layer.in_features)
    if layer.bias is not None:
        layer.bias[...] = jax.random.normal(jax.random.key(seed + 1), layer.bias.shape)


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_input_scale_off_is_the_old_layer_and_on_is_learned():
    x = jnp.asarray(_activations(32, 6))
    plain = KANLinear(6, 4, basis="chebyshev2", rngs=nnx.Rngs(0))
    scaled = KANLinear(6, 4, basis="chebyshev2", input_scale=True, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(scaled(x)), np.asarray(plain(x)))  # s = 1: bit-identical
    graphdef, state = nnx.split(scaled)
    g = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x) ** 2))(state)
    assert np.all(np.asarray(g["input_scale"][...]) != 0)


@pytest.mark.parametrize("family,degree", [("chebyshev2", 3), ("legendre", 5)])
def test_polynomial_layer_rescaled_to_its_batch_is_exact(family, degree):
    """domain "none": p(s'x) spans the same polynomials as p(x), so moving each channel's scale to
    its range keeps the layer's outputs (1e-5), on the batch and on fresh inputs alike."""
    x = _activations(4096, 8)
    layer = KANLinear(8, 5, basis=family, degree=degree, domain="none", base="linear", input_scale=True,
                      rngs=nnx.Rngs(0))
    _random_coef(layer)
    fresh = jnp.asarray(_activations(512, 8, seed=7))
    before, before_fresh = np.asarray(layer(jnp.asarray(x)), np.float64), np.asarray(layer(fresh), np.float64)
    stats = fit_input_scale(layer, x)
    scale = np.asarray(layer.input_scale[...])
    np.testing.assert_allclose(scale, 1.0 / np.max(np.abs(x), axis=0), rtol=1e-6)  # percentile 100, reach 1
    assert stats["max_scale"] / stats["min_scale"] > 10  # the outlier channels really moved
    assert stats["rel_error"] < 1e-5
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), before, atol=1e-5 * np.abs(before).max())
    np.testing.assert_allclose(np.asarray(layer(fresh)), before_fresh, atol=1e-5 * np.abs(before_fresh).max())


def test_bspline_grid_refinement_is_exact():
    """Halving the knot spacing on the same range nests the spline spaces: exact."""
    x = np.random.default_rng(2).uniform(-1, 1, size=(2048, 6)).astype(np.float32)
    old = KANLinear(6, 4, basis="bspline", grid=4, order=3, domain="none", rngs=nnx.Rngs(0))
    _random_coef(old)
    new = KANLinear(6, 4, basis="bspline", grid=8, order=3, domain="none", rngs=nnx.Rngs(5))
    stats = transfer(old, new, x)
    assert stats["rel_error"] < 1e-5, stats


def test_transfer_is_the_per_channel_least_squares_optimum():
    """Independent numpy: for each channel, lstsq of the new columns onto the old edge functions."""
    x = _activations(1024, 5)
    old = KANLinear(5, 3, basis="rbf", num_centers=6, domain="tanh", rngs=nnx.Rngs(0))
    _random_coef(old)
    new = KANLinear(5, 3, basis="rbf", num_centers=6, domain="tanh", input_scale=True, rngs=nnx.Rngs(1))
    new.input_scale[...] = jnp.asarray(input_scale_from_batch(new, x))
    transfer(old, new, x)
    a = np.asarray(new.features(jnp.asarray(x)), np.float64)
    b = np.asarray(old.features(jnp.asarray(x)), np.float64)
    for i in range(5):
        target = b[:, i] @ np.asarray(old.coef[...][i], np.float64)  # (n, out) edge functions of channel i
        want, *_ = np.linalg.lstsq(a[:, i], target, rcond=None)
        np.testing.assert_allclose(np.asarray(new.coef[...][i]), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("family,kwargs,bound", [("bspline", {"grid": 5, "order": 3}, 0.01),
                                                 ("rbf", {"num_centers": 8}, 0.06)])
def test_grid_families_moved_to_the_batch_range(family, kwargs, bound, record_property):
    """tanh-domain B-spline / RBF layers at their start (coef_init "linear": a random linear map of
    tanh(x), smooth on the grid) whose inputs use a sliver of the grid: after the refit every sample
    of each channel lands on the grid (percentile 100, the largest at tanh(2)). Not exact (new knots,
    another warp): ordinary channels keep their edge functions to `bound` (measured 1e-3 for
    B-splines, 4e-2 for RBFs); the two outlier channels (20x) do not, by design: their old functions
    were flat where tanh saturates, and for B-splines discontinuous where float32 tanh rounds to 1
    (the last knot interval is half-open), which no rescaled basis reproduces (measured 0.2-0.4)."""
    x = _activations(8192, 8)
    layer = KANLinear(8, 6, basis=family, domain="tanh", input_scale=True, rngs=nnx.Rngs(0), **kwargs)
    before_phi, before_coef = np.asarray(layer.features(jnp.asarray(x)), np.float64), np.asarray(layer.coef[...])
    before = np.asarray(layer(jnp.asarray(x)), np.float64)
    unrefit = nnx.clone(layer)
    unrefit.input_scale[...] = jnp.asarray(input_scale_from_batch(layer, x))
    stats = fit_input_scale(layer, x)
    phi, coef = np.asarray(layer.features(jnp.asarray(x)), np.float64), np.asarray(layer.coef[...])
    per_channel = [_rel(phi[:, i] @ coef[i], before_phi[:, i] @ before_coef[i]) for i in range(8)]
    ordinary = [e for i, e in enumerate(per_channel) if i not in (1, 5)]
    record_property(f"{family}_refit_rel_error", stats["rel_error"])
    record_property(f"{family}_ordinary_channel_max_error", max(ordinary))
    print(f"{family}: refit relative error {stats['rel_error']:.2e} (ordinary channels <= {max(ordinary):.1e}, "
          f"outliers {per_channel[1]:.2f}, {per_channel[5]:.2f}); without refit "
          f"{_rel(unrefit(jnp.asarray(x)), before):.2e}")
    assert max(ordinary) < bound
    assert stats["rel_error"] < 0.5 * _rel(unrefit(jnp.asarray(x)), before)


def test_refit_needs_the_option_and_a_supported_domain():
    x = _activations(16, 4)
    with pytest.raises(ValueError, match="input_scale=True"):
        fit_input_scale(KANLinear(4, 2, rngs=nnx.Rngs(0)), x)
    with pytest.raises(ValueError, match="layernorm"):
        input_scale_from_batch(KANLinear(4, 2, domain="layernorm", input_scale=True, rngs=nnx.Rngs(0)), x)


def test_mlp_refit_keeps_the_block():
    """A kanified MLP (polynomial, domain "none", linear base): gate, up and down are rescaled to
    their own inputs (down: act(gate) ⊙ up) and the block's output is kept."""
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = kanify(LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
                   dict(targets=["mlp"], basis="chebyshev2", degree=3, domain="none", base="linear",
                        input_scale=True, init="from_linear"))
    mlp = model.model.layers[0].mlp
    x = _activations(2048, 16, outliers=(3,))
    before = np.asarray(mlp(jnp.asarray(x)), np.float64)
    stats = fit_mlp_input_scales(mlp, x)
    assert set(stats) == {"gate", "up", "down"}
    assert all(s["max_scale"] != 1.0 for s in stats.values())
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x))), before, atol=1e-5 * np.abs(before).max())
