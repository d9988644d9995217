"""benchmarks/perf/step_profile.py on real compiled XLA modules and real profiler traces: each instruction's
kind and pass, and the traced time of a matmul-bound step landing on its matmuls."""


import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.perf import step_profile


def _sgd_step(params, ids, target):
    """An embedding lookup, a dense layer, a squared loss, and an SGD update: (params, ids, target) -> params."""

    def loss(p):
        h = jnp.take(p["embed"], ids, axis=0)  # (b, d): gather forward, scatter-add backward
        return jnp.mean((jnp.tanh(h @ p["w"]) - target) ** 2)

    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)


def _inputs(b=256, d=256, vocab=1000):
    rng = np.random.default_rng(0)
    params = {"embed": jnp.asarray(rng.normal(size=(vocab, d)), jnp.float32),
              "w": jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d), jnp.float32)}
    return params, jnp.asarray(rng.integers(0, vocab, b), jnp.int32), jnp.zeros((b, d), jnp.float32)


def test_classify_finds_each_kind_in_its_pass():
    args = _inputs()
    hlo = jax.jit(_sgd_step).lower(*args).compile().as_text()
    found = set(step_profile.classify(hlo).values())
    assert ("matmul", "forward") in found
    assert ("matmul", "backward") in found  # the weight and input gradients of h @ w
    assert ("gather", "forward") in found
    assert ("scatter", "backward") in found  # the embedding gradient
    assert {k for k, _ in found} <= set(step_profile.KINDS)
    assert {p for _, p in found} <= set(step_profile.PASSES)


def test_kind_priority_and_pass_markers():
    assert step_profile.kind_of({"dot", "transpose", "add"}) == "matmul"
    assert step_profile.kind_of({"copy", "transpose", "bitcast"}) == "layout copy"
    assert step_profile.kind_of({"reduce-window", "multiply"}) == "reduction"
    assert step_profile.kind_of({"multiply", "add"}) == "elementwise"
    assert step_profile.pass_of("jit(f)/transpose(jvp(f))/dot_general") == "backward"
    assert step_profile.pass_of("jit(f)/jvp(f)/dot_general") == "forward"
    assert step_profile.pass_of("jit(f)/sub") == "optimizer & rest"


def test_profile_of_a_matmul_bound_function_lands_on_its_matmuls():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(768, 768)), jnp.float32)
    chain = jax.jit(lambda a: jnp.sum(jnp.tanh(a @ a) @ a))  # 2 × 0.9 GFLOP of dots, a little elementwise
    hlo = chain.lower(x).compile().as_text()

    def run():
        jax.block_until_ready(chain(x))
    run()
    prof = step_profile.profile(run, hlo, steps=3)
    total = sum(prof.values())
    assert total > 0
    matmul = sum(v for (kind, _), v in prof.items() if kind == "matmul")
    assert matmul / total > 0.5, prof
    text = step_profile.table({"chain": prof})
    assert "| chain | matmul |" in text and "| chain | **all ops** |" in text
