"""kanjax.viz: the plotted edge functions are the layer's own, and the PNG is written."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan.layer import KANLinear
from kanjax.kan.viz import edge_functions, plot_functions


@pytest.mark.parametrize("basis,base", [("chebyshev2", None), ("bspline", "silu"), ("rational", None)])
def test_edge_functions_sum_to_layer_output(basis, base):
    # With one input, y_o = φ_0o(x) + bias_o: the plotted function is exactly the layer's.
    layer = KANLinear(1, 3, basis=basis, base=base, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.array([0.5, -1.0, 2.0])
    x = np.linspace(-3, 3, 50)
    phis = edge_functions(layer, x, [(0, 0), (0, 1), (0, 2)])
    y = np.asarray(layer(jnp.asarray(x, jnp.float32)[:, None])) - np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(phis, y, atol=1e-5)


def test_plot_functions_writes_png(tmp_path):
    layer = KANLinear(4, 5, rngs=nnx.Rngs(0), domain="layernorm")
    path = plot_functions(layer, tmp_path / "edges.png", edges=[(0, 0), (3, 4)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"edge \(4, 0\)"):
        plot_functions(layer, tmp_path / "bad.png", edges=[(4, 0)])
