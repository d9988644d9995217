"""Pictures of what KAN layers learned: the 1-D function on each (input, output) edge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kanjax.kan.layer import KANLinear


def default_x_range(layer: KANLinear) -> tuple[float, float]:
    """Input range worth looking at: where a squashing domain is not yet flat, else the interval."""
    if layer.domain == "none":
        return layer.interval
    return (-3.0, 3.0)


def edge_functions(layer: KANLinear, x: np.ndarray, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """φ_io(x) for each edge (i, o): (n,) grid → (n, len(edges)), float64.

    φ_io(x) = Σ_k coef[i, k, o] s_k B_k(t(x)) + base_kernel[i, o] · base(x); the bias is shared
    by all edges into o and left out. For domain="layernorm" the features are not separable, so x
    is read as the already-standardised input.
    """
    for i, o in edges:
        if not (0 <= i < layer.in_features and 0 <= o < layer.out_features):
            raise ValueError(f"edge ({i}, {o}) outside the layer's ({layer.in_features}, "
                             f"{layer.out_features}) edges")
    x = np.asarray(x, np.float32)
    grid = jnp.broadcast_to(jnp.asarray(x)[:, None], (x.size, layer.in_features))
    if layer.domain == "layernorm":
        phi = layer.features_of_squashed(jnp.tanh(grid))  # x read as the standardised input
    else:
        phi = layer.features(grid)
    phi = np.asarray(phi, np.float64)  # (n, i, K)
    coef = np.asarray(layer.coef[...], np.float64)  # (i, K, o)
    out = np.stack([phi[:, i, :] @ coef[i, :, o] for i, o in edges], axis=-1)
    if layer.base:
        xb = np.asarray(jax.nn.silu(x) if layer.base == "silu" else x, np.float64)
        base = np.asarray(layer.base_kernel[...], np.float64)
        out = out + np.stack([xb * base[i, o] for i, o in edges], axis=-1)
    return out


def plot_functions(
    layer: KANLinear,
    path: str | Path,
    edges: Sequence[tuple[int, int]] | None = None,
    *,
    x_range: tuple[float, float] | None = None,
    num_points: int = 400,
    title: str | None = None,
) -> Path:
    """Draw the learned 1-D functions of selected (input, output) edges to a PNG.

    edges: list of (input index, output index); default: the first 3 inputs × first 3 outputs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if edges is None:
        edges = [(i, o) for i in range(min(3, layer.in_features)) for o in range(min(3, layer.out_features))]
    lo, hi = x_range or default_x_range(layer)
    x = np.linspace(lo, hi, num_points)
    y = edge_functions(layer, x, edges)
    cols = min(3, len(edges))
    rows = -(-len(edges) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (i, o), col in zip(axes.flat, edges, y.T):
        ax.plot(x, col, lw=1.6)
        ax.axhline(0.0, color="0.8", lw=0.6)
        ax.set_title(f"in {i} → out {o}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(edges):]:
        ax.axis("off")
    fig.suptitle(title or f"{layer.basis} (degree {layer.basis_params.get('degree', '-')}), "
                 f"domain {layer.domain}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
