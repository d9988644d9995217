"""KAN layers reading one input share one basis expansion and one matmul (`KANLinear.apply_shared`,
`kanjax.llama.model.project_alike`): values and gradients are each layer's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan.layer import KANLinear
from kanjax.llama import model as llama_model
from kanjax.llama.kanify import KANProjection, build_model
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

X = jax.random.normal(jax.random.key(7), (3, 5, 12)) * 1.5


def _layers(*, widths=(9, 4, 4), **kw):
    return [KANLinear(12, w, rngs=nnx.Rngs(i), **kw) for i, w in enumerate(widths)]


def _dot_count(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


def _close(a, b, tol: float) -> None:
    """max |a − b| within tol of max |b|: float32 matmuls of a different width may sum in another order."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= tol * max(np.max(np.abs(b)), 1e-30)


def _loss(outs) -> jax.Array:
    return sum(jnp.sum(jnp.sin(y) * (i + 1)) for i, y in enumerate(outs))


@pytest.mark.parametrize("kw", [dict(recompute=False), dict(recompute=True, chunks=3),
                                dict(recompute=False, basis="legendre", degree=3, domain="none"),
                                dict(recompute=False, basis="bspline", base="linear"),
                                dict(recompute=False, basis="rbf", use_bias=False)])
def test_shared_expansion_gives_each_layer_its_own_values_and_gradients(kw):
    layers = _layers(**kw)
    graphdefs, states = zip(*(nnx.split(layer) for layer in layers))

    def run(states, x, shared):
        mods = [nnx.merge(g, s) for g, s in zip(graphdefs, states)]
        return KANLinear.apply_shared(mods, x) if shared else [m(x) for m in mods]

    shared, alone = run(states, X, True), run(states, X, False)
    for a, b in zip(shared, alone):
        _close(a, b, 1e-6)
    g_shared = jax.grad(lambda s, x: _loss(run(s, x, True)), argnums=(0, 1))(states, X)
    g_alone = jax.grad(lambda s, x: _loss(run(s, x, False)), argnums=(0, 1))(states, X)
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_alone)):
        _close(a, b, 1e-6)
    # one contraction for the three KAN terms (each linear base branch adds its own)
    bases = 3 if kw.get("base") else 0
    assert _dot_count(lambda x: run(states, x, True), X) == 1 + bases
    assert _dot_count(lambda x: run(states, x, False), X) == 3 + bases


@pytest.mark.parametrize("odd", [dict(domain="clip"), dict(degree=3), dict(input_scale=True),
                                 dict(basis="group_rational", domain="none")])
def test_layers_that_expand_differently_run_alone(odd):
    layers = _layers(recompute=False)[:2] + [KANLinear(12, 4, rngs=nnx.Rngs(5), recompute=False, **odd)]
    if "input_scale" in odd or "basis" in odd:  # learned basis arrays: never shared, even among equals
        assert layers[2].expansion_key() is None
    outs = KANLinear.apply_shared(layers, X)
    for layer, y in zip(layers, outs):
        np.testing.assert_allclose(y, layer(X), rtol=1e-6, atol=1e-6)
    assert _dot_count(lambda x: KANLinear.apply_shared(layers, x), X) == 3


TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)
IDS = jnp.array([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
MASK = (IDS != 0).astype(jnp.int32)


@pytest.mark.parametrize("model_cls", [LlamaForCausalLM, LlamaForSequenceClassification])
@pytest.mark.parametrize("spec", [dict(targets=["all"], param_match="width"),
                                  dict(targets=["all"], strategy="parallel"),
                                  dict(targets=["mlp"], basis="legendre", degree=3)])
def test_a_kan_model_computes_the_same_with_and_without_sharing(model_cls, spec, monkeypatch):
    model = build_model(model_cls, TINY, spec)
    graphdef, state = nnx.split(model)

    def loss(state):
        out = nnx.merge(graphdef, state)(IDS, MASK)
        return jnp.sum(jnp.sin(out)), out

    (_, shared), g_shared = jax.value_and_grad(loss, has_aux=True)(state)
    monkeypatch.setattr(llama_model, "project_alike", lambda projections, x: [p(x) for p in projections])
    (_, alone), g_alone = jax.value_and_grad(loss, has_aux=True)(state)
    _close(shared, alone, 1e-6)
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_alone)):
        _close(a, b, 1e-5)


def test_project_alike_shares_only_among_kan_projections():
    model = build_model(LlamaForCausalLM, TINY, dict(targets=["mlp"]))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    x = jax.random.normal(jax.random.key(0), (2, 6, TINY.hidden_size))
    assert isinstance(mlp.gate_proj, KANProjection) and isinstance(attn.q_proj, nnx.Linear)
    assert _dot_count(lambda x: llama_model.project_alike((mlp.gate_proj, mlp.up_proj), x), x) == 1
    assert _dot_count(lambda x: llama_model.project_alike((attn.q_proj, attn.k_proj, attn.v_proj), x), x) == 3
    mixed = llama_model.project_alike((mlp.gate_proj, attn.q_proj), x)
    np.testing.assert_allclose(mixed[1], attn.q_proj(x), rtol=1e-6)
