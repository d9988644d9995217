"""Range refit of KAN layers from a batch of real activations (pykan's `update_grid_from_samples`).

A KAN layer trained (or converted) with its inputs squashed onto a fixed interval sees real LLM
activations on a sliver of it (SmolLM2's late MLP inputs: median |x| ≈ 0.1) while a few outlier
channels run far past it. Two tools move the basis onto the inputs' range and keep the layer's
function while doing so:

* `transfer(old, new, x)`: least squares, per input channel, of `new`'s edge functions onto
  `old`'s over the samples x: new.coef[i] = T_i @ old.coef[i] with T_i = argmin ‖A_i T − B_i‖
  (A_i, B_i the channel's normalised basis columns of `new` and `old` on the samples). `new` may
  differ in anything that changes the columns: grid_range, grid size, centres, input_scale,
  domain. The fit is exact whenever `new`'s columns span `old`'s on the samples: a polynomial
  layer with domain "none" under any input scale, a B-spline grid refined with nested knots.
  Otherwise it is the best the new basis can do in least squares over the batch (measured in
  tests/test_range_refit.py).
* `fit_input_scale(layer, x)`: in place, sets the layer's per-channel `input_scale` (KANSpec /
  KANLinear `input_scale=True`) so that each channel's percentile of |x| lands at the basis'
  reach, then transfers the old function onto the rescaled basis. Per channel this moves the grid
  (centres) to that channel's range, the analogue of pykan's per-input grids.

The base branch and the bias see the raw input and are kept as they are. Numpy float64 for the
least squares (normal equations accumulated over sample chunks, so any number of tokens fits in
memory; pseudo-inverse for channels whose samples leave columns empty).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.kan.layer import KANLinear

# Where a channel's percentile should land, per domain: the edge of the basis' interval for "none"
# (a B-spline is 0 past its grid), tanh(2) = 0.96 for "tanh" (near the edge, not yet flat), the
# clip point for "clip". "layernorm" standardises across channels after the scale: not supported.
REACH = {"tanh": 2.0, "clip": 1.0}


def _features64(layer: KANLinear, x: np.ndarray) -> np.ndarray:
    """(n, in) → (n, in, K) normalised columns of `layer` at x, float64."""
    return np.asarray(layer.features(jnp.asarray(x, jnp.float32)), np.float64)


def transfer(old: KANLinear, new: KANLinear, x: np.ndarray, chunk: int = 2048) -> dict[str, float]:
    """Set new.coef (and its bias / base branch, copied) so that `new` computes `old`'s function as
    closely as its basis allows over the samples x (n, in), in least squares per input channel.

    Returns {"rel_error": ‖new(x) − old(x)‖ / ‖old(x)‖, "kan_rel_error": the same for the KAN path
    alone (no bias, no base branch), both over x}.
    """
    x = np.asarray(x, np.float32).reshape(-1, old.in_features)
    if (old.in_features, old.out_features) != (new.in_features, new.out_features):
        raise ValueError(f"transfer: shapes differ, {old.in_features}→{old.out_features} vs "
                         f"{new.in_features}→{new.out_features}")
    if (old.base, old.bias is None) != (new.base, new.bias is None):
        raise ValueError("transfer: old and new must have the same base branch and bias (they are copied)")
    k_new = len(new.active)
    gram = np.zeros((new.in_features, k_new, k_new))
    cross = np.zeros((new.in_features, k_new, len(old.active)))
    for start in range(0, len(x), chunk):
        a, b = _features64(new, x[start:start + chunk]), _features64(old, x[start:start + chunk])
        gram += np.einsum("nik,nil->ikl", a, a)
        cross += np.einsum("nik,nil->ikl", a, b)
    # Min-norm solution per channel: columns with no samples under them get coefficient 0.
    t = np.linalg.pinv(gram, rcond=1e-12, hermitian=True) @ cross  # (in, K_new, K_old)
    coef = np.einsum("ikl,ilo->iko", t, np.asarray(old.coef[...], np.float64))
    new.coef[...] = jnp.asarray(coef, new.param_dtype)
    if old.base:
        new.base_kernel[...] = old.base_kernel[...]
    if old.bias is not None:
        new.bias[...] = old.bias[...]
    return _errors(old, new, x, chunk)


def _errors(old: KANLinear, new: KANLinear, x: np.ndarray, chunk: int) -> dict[str, float]:
    err = ref = kan_err = kan_ref = 0.0
    for start in range(0, len(x), chunk):
        xb = jnp.asarray(x[start:start + chunk])
        y_old, y_new = np.asarray(old(xb), np.float64), np.asarray(new(xb), np.float64)
        err, ref = err + np.sum((y_new - y_old) ** 2), ref + np.sum(y_old ** 2)
        k_old = _kan_path(old, xb)
        kan_err, kan_ref = kan_err + np.sum((_kan_path(new, xb) - k_old) ** 2), kan_ref + np.sum(k_old ** 2)
    return {"rel_error": float(np.sqrt(err / max(ref, 1e-300))),
            "kan_rel_error": float(np.sqrt(kan_err / max(kan_ref, 1e-300)))}


def _kan_path(layer: KANLinear, x) -> np.ndarray:
    phi = np.asarray(layer.features(x), np.float64)
    return np.einsum("nik,iko->no", phi, np.asarray(layer.coef[...], np.float64))


def input_scale_from_batch(layer: KANLinear, x: np.ndarray, percentile: float = 100.0,
                           reach: float | None = None) -> np.ndarray:
    """(in,) scales s_i = reach / q_i, q_i the channel's `percentile` of |x| (s_i = 1 where q_i = 0).

    reach (default `REACH`, or for domain "none" the nearer edge of the basis interval around 0) is
    where q_i lands after scaling: percentile 100 puts every sample of the batch on the grid.
    """
    if layer.domain == "layernorm":
        raise ValueError("input_scale_from_batch: the layernorm domain standardises across channels "
                         "after the scale; a per-channel percentile does not say where inputs land")
    if reach is None:
        lo, hi = layer.interval
        reach = REACH.get(layer.domain) or (min(-lo, hi) if lo < 0 < hi else max(abs(lo), abs(hi)))
    q = np.percentile(np.abs(np.asarray(x, np.float64).reshape(-1, layer.in_features)), percentile, axis=0)
    return np.where(q > 0, reach / np.where(q > 0, q, 1.0), 1.0)


def fit_input_scale(layer: KANLinear, x: np.ndarray, percentile: float = 100.0, reach: float | None = None,
                    scale: np.ndarray | None = None) -> dict[str, float]:
    """In place: set `layer.input_scale` to `scale` (default: `input_scale_from_batch`) and refit its
    coefficients by `transfer` from the layer as it was, over the samples x (n, in).

    Returns transfer's errors plus "max_scale" / "min_scale".
    """
    if layer.input_scale is None:
        raise ValueError("fit_input_scale: the layer has no input_scale (build it with input_scale=True, "
                         "KANSpec(input_scale=True))")
    old = nnx.clone(layer)
    scale = input_scale_from_batch(layer, x, percentile, reach) if scale is None else np.asarray(scale)
    layer.input_scale[...] = jnp.asarray(scale, layer.param_dtype)
    stats = transfer(old, layer, x)
    return {**stats, "max_scale": float(np.max(scale)), "min_scale": float(np.min(scale))}


def kan_inputs(projection, x):
    """(KANLinear, its input) of a kanify `KANProjection` fed x, or None when it has no KANLinear
    (a plain linear layer, or the "activation" strategy's group rational)."""
    kan = getattr(projection, "kan", None)
    if not isinstance(kan, KANLinear):
        return None
    return kan, (projection.linear(x) if projection.strategy == "sequential" else x)


def fit_mlp_input_scales(mlp, x: np.ndarray, percentile: float = 100.0,
                         reach: float | None = None) -> dict[str, dict[str, float]]:
    """`fit_input_scale` for every KAN layer of a (kanified) `LlamaMLP`, on its input x (n, d).

    gate and up see x; down sees act(gate(x)) ⊙ up(x), computed before any refit (the inputs the
    block really gives it). Returns {kind: stats} for the layers it refitted.
    """
    x = jnp.asarray(np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1]))
    gate = mlp.gate_proj(x)
    h = (gate if mlp.activation == "none" else jax.nn.silu(gate)) * mlp.up_proj(x)
    out = {}
    for kind, inp in (("gate", x), ("up", x), ("down", h)):
        found = kan_inputs(getattr(mlp, f"{kind}_proj"), inp)
        if found is not None:
            out[kind] = fit_input_scale(found[0], np.asarray(found[1]), percentile, reach)
    return out
