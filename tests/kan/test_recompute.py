"""The recomputed KAN path (`KANLinear(recompute=True)`, `kanjax.kan.recompute`): the same values and
gradients as autodiff's plain path for every family, and the memory it is there to save."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan import KANLinear, matched_width
from kanjax.kan import basis as basis_lib
from kanjax.kan.recompute import chunk_count, rowwise_recomputed

FAMILIES = sorted(basis_lib.BASES)
X = jax.random.normal(jax.random.key(1), (2, 64, 12), jnp.float32)


def _grads(layer, x, jit=True):
    """(output, gradients of a non-linear loss of it w.r.t. every parameter and the input)."""
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(p, x):
        y = nnx.merge(graphdef, p, rest)(x)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    g, y = (jax.jit(grad) if jit else grad)(params, x)
    return {"y": y, "grads": g}


def _rel_errors(got, ref) -> dict:
    """{leaf path: ‖got − ref‖ / ‖ref‖}, in float32."""
    f32 = lambda a: jnp.asarray(a, jnp.float32).ravel()  # noqa: E731
    return {jax.tree_util.keystr(path): float(jnp.linalg.norm(f32(g) - f32(r)) / jnp.linalg.norm(f32(r)))
            for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref))}


def test_chunk_count_is_2k_for_rows_divides_them_and_keeps_chunks_large():
    assert chunk_count((1024, 576), 2) == 4  # 2·K
    assert chunk_count((1024, 576), 8) == 8  # 1024 rows / 128 per chunk at most
    assert chunk_count((16, 128, 576), 2) == 4  # rows = 16·128
    assert chunk_count((16, 1, 576), 2) == 1  # 16 rows: one chunk
    assert chunk_count((999, 8), 3) == 3  # a divisor of 999 below 2·K = 6
    assert chunk_count((997, 8), 3) == 1  # prime: one chunk
    assert chunk_count((576,), 2) == 1


def test_rowwise_recomputed_equals_the_function_and_its_gradients():
    w = jax.random.normal(jax.random.key(2), (12, 7))

    def fn(x, w):
        return jnp.tanh(x) ** 2 @ w
    ref_y, ref_g = fn(X, w), jax.grad(lambda x, w: jnp.sum(jnp.cos(fn(x, w))), argnums=(0, 1))(X, w)
    for chunks in (1, 4):
        y = rowwise_recomputed(fn, X, w, chunks=chunks)
        np.testing.assert_allclose(y, ref_y, rtol=1e-6, atol=1e-6)
        g = jax.grad(lambda x, w: jnp.sum(jnp.cos(rowwise_recomputed(fn, x, w, chunks=chunks))),
                     argnums=(0, 1))(X, w)
        assert max(_rel_errors(g, ref_g).values()) < 1e-6
    with pytest.raises(ValueError, match="do not divide"):
        rowwise_recomputed(fn, X, w, chunks=5)


def test_recomputation_frees_the_expansion_between_the_passes_from_two_chunks_on():
    """A stack of KAN layers: the plain path keeps every layer's expansion until the backward pass,
    the recomputed path in 2 chunks keeps each layer's input only; in one chunk XLA:CPU merges the
    recomputation into the forward pass and keeps as much as the plain path (rowwise_recomputed)."""
    import functools

    x = jax.random.normal(jax.random.key(0), (512, 64))

    def temp_bytes(n_layers, **kw):
        layers = [KANLinear(64, 64, rngs=nnx.Rngs(i), **kw) for i in range(n_layers)]
        graphdef, state = nnx.split(layers)
        step = jax.jit(jax.grad(lambda s, x: jnp.sum(functools.reduce(lambda h, f: jnp.tanh(f(h)),
                                                                      nnx.merge(graphdef, s), x))))
        return step.lower(state, x).compile().memory_analysis().temp_size_in_bytes

    per_layer = {name: temp_bytes(4, **kw) - temp_bytes(2, **kw) for name, kw in
                 (("plain", dict(recompute=False)), ("1 chunk", dict(chunks=1)), ("2 chunks", dict(chunks=2)))}
    x_bytes = x.size * 4
    assert per_layer["2 chunks"] <= 2 * (2 * x_bytes) + 4096, per_layer  # x and tanh(x) per layer
    assert per_layer["plain"] >= 2 * (2 * x_bytes) + 2 * (2 * x_bytes)  # + the (rows, in·2) expansion
    assert per_layer["1 chunk"] >= per_layer["plain"] - x_bytes


@pytest.mark.parametrize("kw", [dict(basis=f) for f in FAMILIES]
                         + [dict(basis="chebyshev2", base="silu"), dict(basis="bspline", base="linear"),
                            dict(basis="rational", base="silu"), dict(basis="rbf", domain="layernorm")],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_recomputed_gradients_equal_the_plain_path(kw):
    """The output, every parameter's and the input's gradient, under jit, in 4 chunks, to 1e-6 relative
    (one chunk: test_recomputed_gradients_without_jit_and_in_bfloat16)."""
    plain = _grads(KANLinear(12, 5, recompute=False, rngs=nnx.Rngs(0), **kw), X)
    errors = _rel_errors(_grads(KANLinear(12, 5, chunks=4, rngs=nnx.Rngs(0), **kw), X), plain)
    assert max(errors.values()) < 1e-6, errors


def test_recomputed_gradients_without_jit_and_in_bfloat16():
    """Eager: equal to 1e-6. bfloat16 compute: one chunk equals the plain path to 1e-6; with chunks, the
    parameter gradient's partial sums are rounded to bfloat16 per chunk and summed in float32, so it is
    compared with the float32 gradient: no further from it than the plain bfloat16 path is."""
    plain = _grads(KANLinear(12, 5, basis="rational", recompute=False, rngs=nnx.Rngs(0)), X, jit=False)
    eager = _grads(KANLinear(12, 5, basis="rational", chunks=4, rngs=nnx.Rngs(0)), X, jit=False)
    assert max(_rel_errors(eager, plain).values()) < 1e-6
    truth = _grads(KANLinear(12, 5, recompute=False, rngs=nnx.Rngs(0)), X)
    bf16 = {chunks: _grads(KANLinear(12, 5, dtype=jnp.bfloat16, recompute=chunks is not None, chunks=chunks,
                                     rngs=nnx.Rngs(0)), X) for chunks in (None, 1, 4)}
    assert max(_rel_errors(bf16[1], bf16[None]).values()) < 1e-6
    chunked, plain_bf16 = _rel_errors(bf16[4], truth), _rel_errors(bf16[None], truth)
    assert max(plain_bf16.values()) > 1e-3  # bfloat16 is visibly rounded: the comparison below has teeth
    assert all(chunked[k] <= plain_bf16[k] * 1.05 + 1e-6 for k in chunked), (chunked, plain_bf16)


def _planned_peak(module, x) -> int:
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x)), argnums=(0, 1)))
    m = step.lower(params, x).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


@pytest.mark.parametrize("basis,limit", [("chebyshev2", 1.25), ("bspline", 1.5), ("rbf", 1.5)])
def test_param_matched_layer_plans_about_the_memory_of_a_linear_layer(basis, limit):
    """Planned peak of the compiled forward+backward (deterministic) against nnx.Linear's, at a small
    version of the benchmark's shape; the plain path needs 1.9× to 3.8× here (kan_layer.md)."""
    x = jax.random.normal(jax.random.key(0), (512, 96))
    linear = _planned_peak(nnx.Linear(96, 256, rngs=nnx.Rngs(0)), x)
    width = matched_width(96, 256, basis=basis)
    recomputed = _planned_peak(KANLinear(96, width, basis=basis, rngs=nnx.Rngs(0)), x)
    plain = _planned_peak(KANLinear(96, width, basis=basis, recompute=False, rngs=nnx.Rngs(0)), x)
    assert recomputed <= limit * linear < plain


def test_the_spec_carries_recompute_to_every_kan_layer():
    """kan.recompute (configs) reaches every KANLinear that kanify builds, both ways."""
    import dataclasses

    from kanjax.llama import LlamaConfig, LlamaForSequenceClassification
    from kanjax.llama.kanify import build_model

    tiny = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    for recompute in (True, False):
        model = build_model(LlamaForSequenceClassification, dataclasses.replace(tiny),
                            dict(targets=["all"], param_match="width", recompute=recompute))
        layers = [node for _, node in nnx.iter_graph(model) if isinstance(node, KANLinear)]
        assert len(layers) == 7 and all(layer.recompute is recompute for layer in layers)


def test_compile_cache_option_writes_the_programs_a_process_compiles(tmp_path):
    """compile_cache.enable in a fresh process: its compilations land in the folder; "" is off."""
    import subprocess
    import sys

    code = ("import sys, jax, jax.numpy as jnp; from kanjax.training import compile_cache; "
            "assert not compile_cache.enable(''); assert compile_cache.enable(sys.argv[1]); "
            "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                                   "JAX_PERSISTENT_CACHE"))}
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]  # python -c imports kanjax from here
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], check=True, env=env, timeout=300, cwd=repo)
    assert any((tmp_path / "cache").iterdir())
