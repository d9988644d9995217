"""kanjax.diagnostics: per-projection statistics against direct numpy computations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.llama.kanify import build_model
from kanjax.llama.model import LlamaConfig, LlamaForSequenceClassification
from kanjax.training import diagnostics
from kanjax.training import step as train_lib

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)


def test_io_stats_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4)) * 2.5
    y = rng.normal(size=(3, 5, 6)) * 0.1 + np.linspace(1, 2, 6)  # a large constant part
    w = np.ones((3, 5))
    w[1, 3:] = 0  # padding tokens are left out
    s = {k: float(v) for k, v in diagnostics.io_stats(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)).items()}
    xr, yr = x[w > 0], y[w > 0]
    assert np.isclose(s["in_rms"], np.sqrt(np.mean(xr ** 2)), rtol=1e-5)
    assert np.isclose(s["in_std"], np.mean(xr.std(axis=0)), rtol=1e-5)
    assert np.isclose(s["in_sat"], np.mean(np.abs(xr) > 2.0), rtol=1e-5)
    assert np.isclose(s["out_rms"], np.sqrt(np.mean(yr ** 2)), rtol=1e-5)
    signal = 1 - np.sum(yr.mean(0) ** 2) / np.sum(np.mean(yr ** 2, axis=0))
    assert np.isclose(s["out_signal"], signal, rtol=1e-4) and s["out_signal"] < 0.05


def _batch():
    ids = np.random.default_rng(1).integers(1, 64, (4, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": np.array([0, 1, 2, 1], np.int32)}


def test_projection_stats_cover_every_kind_and_match_the_gradient():
    model = build_model(LlamaForSequenceClassification, TINY, dict(targets=["mlp"], param_match="width"))
    graphdef, params = nnx.split(model, nnx.Param)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    stats = jax.jit(lambda p, b: diagnostics.projection_stats(graphdef, p, b, train_lib.classification_loss))(
        params, batch)
    assert set(stats) == {f"{k}/{s}" for k in diagnostics.KINDS for s in diagnostics.STATS}
    assert all(np.isfinite(float(v)) for v in stats.values())
    # grad_norm: the L2 norm over one kind's parameters, averaged over the blocks.
    # jitted: op by op, the gradient of this tiny model compiles some 300 kernels (~8 s)
    grads = jax.jit(jax.grad(lambda p: train_lib.classification_loss(nnx.merge(graphdef, p), batch)[0]))(params)
    flat = {train_lib.path_string(p): g for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    per_block = [np.sqrt(sum(float(jnp.sum(g ** 2)) for k, g in flat.items() if f"layers/{i}/mlp/up_proj/" in k))
                 for i in range(TINY.num_hidden_layers)]
    assert np.isclose(float(stats["up/grad_norm"]), np.mean(per_block), rtol=1e-4)
    # The probe leaves the model untouched: the loss is the same with or without it.
    assert np.isclose(float(train_lib.classification_loss(nnx.merge(graphdef, params), batch)[0]),
                      float(train_lib.classification_loss(model, batch)[0]), rtol=1e-6)


def test_random_kan_init_shows_up_as_a_constant_output():
    """The v1 KAN init (coef_init="random", uncentred) makes the MLP outputs nearly input-independent;
    the linear init does not: the statistic the recipe diagnosis rests on."""
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    stats_fn = jax.jit(diagnostics.projection_stats, static_argnums=(0, 3))  # both inits: one compilation

    def signal(coef_init):
        model = build_model(LlamaForSequenceClassification, dataclasses.replace(TINY, hidden_size=64),
                            dict(targets=["mlp"], coef_init=coef_init, center="none"))
        g, p = nnx.split(model, nnx.Param)
        return float(stats_fn(g, p, batch, train_lib.classification_loss)["gate/out_signal"])

    assert signal("random") < 0.2 < signal("linear")
