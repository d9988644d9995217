"""Per-projection training diagnostics: what a KAN run that learns does differently from one that stalls.

`projection_stats(graphdef, params, batch, loss_fn)` runs one forward and one backward pass of the
train loss and returns, for every projection kind (q, k, v, o, gate, up, down; averaged over the
blocks), statistics over the batch's real tokens:

    in_rms      root mean square of the projection's input
    in_std      standard deviation of the input over tokens, averaged over features
    in_sat      fraction of inputs the domain map saturates: |x| > 2 (tanh'(2) = 0.07); for a KAN with
                the layernorm domain, of the standardised input the tanh sees
    out_rms     root mean square of the output
    out_signal  share of the output's power that varies from token to token: 1 − Σ_o mean(y_o)² / Σ_o
                mean(y_o²). Near 0 the projection emits the same vector for every token (a bias).
    param_rms   root mean square of the projection's parameters (KAN coefficients, linear kernels)
    grad_norm   L2 norm of the loss gradient over the projection's parameters

The model is probed, not changed: inside the jitted function each projection module of a freshly
merged copy is wrapped in a `_Probe` that sows its input and output (`nnx.capture`), so the train
step's graph is untouched and linear and KAN models are measured by the same code.
`train.diagnostics_every` turns this on in `kanjax.training.loop` (rows with split "diagnostics").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
STATS = ("in_rms", "in_std", "in_sat", "out_rms", "out_signal", "param_rms", "grad_norm")
SATURATED = 2.0
_PROJ_PATH = re.compile(r"layers/(\d+)/(?:self_attn|mlp)/(q|k|v|o|gate|up|down)_proj/")


class _Probe(nnx.Module):
    """Calls `inner` and sows (input, output) under `key` when run inside `nnx.capture`."""

    def __init__(self, inner: nnx.Module, key: str):
        self.inner, self.key = inner, key

    def __call__(self, x):
        y = self.inner(x)
        self.sow(nnx.Intermediate, self.key, (x, y))
        return y


def _domain(module) -> str:
    kan = getattr(module, "kan", None)
    return getattr(kan, "domain", "") if kan is not None else ""


def _attach_probes(model) -> dict[str, tuple[str, str]]:
    """Wrap every projection of the blocks in a _Probe; {sow key: (kind, domain)}."""
    keys = {}
    for i, block in enumerate(model.model.layers):
        for kind in KINDS:
            parent = block.self_attn if kind in KINDS[:4] else block.mlp
            name = f"{kind}_proj"
            inner = getattr(parent, name)
            key = f"{kind}_{i}"
            keys[key] = (kind, _domain(inner))
            setattr(parent, name, _Probe(inner, key))
    return keys


def token_weight(batch: Mapping[str, jax.Array]) -> jax.Array:
    """(b, t) float32: 1 on the real tokens of the batch (classify: attention_mask; LM: segment_ids > 0)."""
    if "attention_mask" in batch:
        w = batch["attention_mask"].astype(jnp.float32)
    elif "segment_ids" in batch:
        w = (batch["segment_ids"] > 0).astype(jnp.float32)
    else:
        w = jnp.ones(batch["input_ids"].shape, jnp.float32)
    if "weight" in batch:  # padding rows of an eval batch
        w = w * batch["weight"][:, None]
    return w


def io_stats(x: jax.Array, y: jax.Array, weight: jax.Array, domain: str = "") -> dict[str, jax.Array]:
    """x (b, t, i), y (b, t, o), weight (b, t) -> the in_*/out_* statistics of the module docstring."""
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    if weight.shape != x.shape[:2]:  # a classifier's last block runs at its pooled tokens only
        weight = jnp.ones(x.shape[:2], jnp.float32)
    w = weight[..., None]
    n = jnp.maximum(jnp.sum(weight), 1.0)

    def mean(a):  # over real tokens -> per feature
        return jnp.sum(a * w, axis=(0, 1)) / n

    mx, my = mean(x), mean(y)
    x2, y2 = mean(x * x), mean(y * y)
    if domain == "layernorm":
        mu = jnp.mean(x, axis=-1, keepdims=True)
        z = (x - mu) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True) + 1e-5)
    else:
        z = x
    sat = jnp.sum((jnp.abs(z) > SATURATED) * w) / (n * x.shape[-1])
    return {"in_rms": jnp.sqrt(jnp.mean(x2)),
            "in_std": jnp.mean(jnp.sqrt(jnp.maximum(x2 - mx * mx, 0.0))),
            "in_sat": sat,
            "out_rms": jnp.sqrt(jnp.mean(y2)),
            "out_signal": 1.0 - jnp.sum(my * my) / jnp.maximum(jnp.sum(y2), 1e-30)}


def _group_norms(tree, square: bool) -> dict[tuple[int, str], jax.Array]:
    """{(layer, kind): Σ leaf² (square) or (Σ leaf², count)} over the projection parameters."""
    from kanjax.llama.surgery import path_string

    out: dict[tuple[int, str], list] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        m = _PROJ_PATH.search(path_string(path) + "/")
        if m is None:
            continue
        acc = out.setdefault((int(m.group(1)), m.group(2)), [0.0, 0])
        acc[0] = acc[0] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
        acc[1] += leaf.size
    return {k: (v[0] if square else (v[0], v[1])) for k, v in out.items()}


def projection_stats(graphdef, params, batch: Mapping[str, jax.Array],
                     loss_fn: Callable) -> dict[str, jax.Array]:
    """{f"{kind}/{stat}": scalar} averaged over blocks (see the module docstring). Jit it."""
    model = nnx.merge(graphdef, params)
    keys = _attach_probes(model)
    _, captured = nnx.capture(lambda m, b: loss_fn(m, b), nnx.Intermediate)(model, batch)
    sown = {}
    for path, var in nnx.to_flat_state(captured):
        if path and path[-1] in keys:
            sown[path[-1]] = var.get_value() if isinstance(var, nnx.Variable) else var
    weight = token_weight(batch)
    per: dict[str, list[dict]] = {k: [] for k in KINDS}
    for key, (kind, domain) in keys.items():
        (x, y), = sown[key]  # one call per projection per forward
        per[kind].append(io_stats(x, y, weight, domain))

    grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch)[0])(params)
    grad_sq = _group_norms(grads, square=True)
    param_sq = _group_norms(params, square=False)
    out = {}
    for kind, rows in per.items():
        if not rows:
            continue
        for stat in rows[0]:
            out[f"{kind}/{stat}"] = jnp.mean(jnp.stack([r[stat] for r in rows]))
        layers = [k for k in grad_sq if k[1] == kind]
        out[f"{kind}/grad_norm"] = jnp.mean(jnp.stack([jnp.sqrt(grad_sq[k]) for k in layers]))
        out[f"{kind}/param_rms"] = jnp.mean(jnp.stack([jnp.sqrt(param_sq[k][0] / param_sq[k][1]) for k in layers]))
    return out


def jit_projection_stats(trainer, example_batch):
    """projection_stats jitted for a `kanjax.training.step.Trainer` (params sharded as in training)."""
    from kanjax.training import sharding as shard_lib

    return jax.jit(lambda params, batch: projection_stats(trainer.graphdef, params, batch, trainer.loss_fn),
                   in_shardings=(trainer.state_sharding["params"], trainer.batch_sharding(example_batch)),
                   out_shardings=shard_lib.replicated(trainer.mesh))


__all__ = ["KINDS", "STATS", "io_stats", "token_weight", "projection_stats", "jit_projection_stats"]
