"""kanjax.matmul: the hand-written backward of x @ W equals jax.grad of the plain product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan import matmul


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_value_and_gradients_match_the_plain_product(shape, dtype):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (shape[-1], 6), jnp.float32).astype(dtype)
    probe = jax.random.normal(jax.random.key(2), shape[:-1] + (6,), jnp.float32)

    def loss(f, x, w):
        return jnp.sum(f(x, w).astype(jnp.float32) * probe)

    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(matmul.dense(x, w).astype(jnp.float32), (x @ w).astype(jnp.float32), rtol=tol, atol=tol)
    ours = jax.grad(lambda x, w: loss(matmul.dense, x, w), argnums=(0, 1))(x, w)
    ref = jax.grad(lambda x, w: loss(lambda a, b: a @ b, x, w), argnums=(0, 1))(x, w)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=tol, atol=tol)


def test_dot_general_routes_only_the_plain_contraction():
    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, 2))
    plain = matmul.dot_general(x, w, (((1,), (0,)), ((), ())))
    np.testing.assert_allclose(plain, x @ w, rtol=1e-6)
    # Other contractions go to lax unchanged: xᵀ-style and batched products.
    other = matmul.dot_general(x, x, (((0,), (0,)), ((), ())))
    np.testing.assert_allclose(other, x.T @ x, rtol=1e-6)
    b = jax.random.normal(jax.random.key(2), (2, 4, 3))
    batched = matmul.dot_general(b, b, (((2,), (2,)), ((0,), (0,))))
    np.testing.assert_allclose(batched, jnp.einsum("bik,bjk->bij", b, b), rtol=1e-5)


def test_linear_layer_with_it_trains_like_flax_default():
    """nnx.Linear(dot_general=matmul.dot_general): same outputs and parameter gradients as the default."""
    x = jax.random.normal(jax.random.key(3), (2, 5, 8))
    ours = nnx.Linear(8, 4, dot_general=matmul.dot_general, rngs=nnx.Rngs(0))
    ref = nnx.Linear(8, 4, rngs=nnx.Rngs(0))

    def grads(layer):
        g, s = nnx.split(layer)
        return jax.grad(lambda s: jnp.sum(jnp.sin(nnx.merge(g, s)(x))))(s)

    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
