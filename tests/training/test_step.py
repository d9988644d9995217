"""Train-step pieces in process: gradient accumulation, rematerialisation, checkpoint fallback."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kanjax.llama.model import LlamaConfig, LlamaForCausalLM
from kanjax.training import sharding
from kanjax.training import step as train_lib
from kanjax.training.checkpoint import Checkpointer

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


def _train_cfg(**kw):
    """configs/base.py's train section (the schema) with a plain constant-rate optimiser."""
    from configs.base import get_config

    c = get_config().train
    c.update({**dict(lr=1e-2, steps=10, warmup=0, schedule="constant", weight_decay=0.0, clip=0.0), **kw})
    return c


def _batch(rows, seed=0):
    ids = np.random.default_rng(seed).integers(0, 64, (rows, 12)).astype(np.int32)
    return dict(input_ids=ids, targets=np.roll(ids, -1, 1), loss_mask=np.ones((rows, 12), np.float32),
                segment_ids=np.ones((rows, 12), np.int32), positions=np.tile(np.arange(12, dtype=np.int32), (rows, 1)))


def _run(model, cfg, batches):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainer, state = train_lib.create_trainer(model, cfg, "causal_lm", mesh)
    step = train_lib.jit_train_step(trainer, batches[0])
    for b in batches:
        state, _ = step(state, sharding.host_batch_to_global(b, mesh))
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_gradient_accumulation_equals_the_full_batch():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    full = _batch(8)
    halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
    one = _run(model, _train_cfg(), [full])
    accumulated = _run(model, _train_cfg(grad_accum=2), halves)
    for a, b in zip(one, accumulated):
        np.testing.assert_allclose(a, b, atol=1e-6)
    untouched = _run(model, _train_cfg(grad_accum=2), halves[:1])  # no update before the k-th micro-step
    for a, b in zip(untouched, [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]):
        np.testing.assert_array_equal(a, b)


def test_a_step_is_optax_applied_by_hand_and_a_non_finite_gradient_changes_nothing():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    cfg = _train_cfg(clip=1.0, weight_decay=0.1)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainer, state = train_lib.create_trainer(model, cfg, "causal_lm", mesh)
    batch = sharding.host_batch_to_global(_batch(4), mesh)
    step = train_lib.jit_train_step(trainer, _batch(4))

    def loss(params):
        return trainer.loss_fn(nnx.merge(trainer.graphdef, params), batch)[0]

    # The reference: the gradient and the optimiser's update, applied outside the jitted step.
    grads = jax.grad(loss)(state["params"])
    updates, opt = trainer.tx.update(grads, state["opt"], state["params"])
    want = [np.asarray(x) for x in jax.tree.leaves((optax.apply_updates(state["params"], updates), opt))]
    state, metrics = step(state, batch)  # donates the state it was given
    got = [np.asarray(x) for x in jax.tree.leaves((state["params"], state["opt"]))]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(metrics["skipped"]) == 0 and int(state["skipped"]) == 0

    # A NaN in the embedding row of a token the batch reads: NaN gradients, so nothing may move.
    emb = state["params"]["model"]["embed_tokens"]["embedding"]
    emb[...] = emb[...].at[int(_batch(4)["input_ids"][0, 0])].set(jnp.nan)
    before = [np.asarray(x).copy() for x in jax.tree.leaves((state["params"], state["opt"]))]
    state, metrics = step(state, batch)
    after = [np.asarray(x) for x in jax.tree.leaves((state["params"], state["opt"]))]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)  # NaNs compare equal here, and every other bit must too
    assert not np.isfinite(float(metrics["grad_norm"]))
    assert int(metrics["skipped"]) == 1 and int(state["skipped"]) == 1 and int(state["step"]) == 2


def test_remat_gives_the_same_step():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    plain = _run(model, _train_cfg(), [_batch(4)])
    model.model.remat = True
    remat = _run(model, _train_cfg(), [_batch(4)])
    for a, b in zip(plain, remat):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unreadable_newest_checkpoint_is_moved_aside_and_saving_goes_on(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path / "ckpt", every=1, keep=2, async_save=False)
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(0)}
    for step in (1, 2, 3):
        ckpt.save(step, {"w": state["w"] * step, "step": jnp.int32(step)}, {"next_index": step}, {"seed": 0}, {})
    ckpt.wait()
    assert ckpt.steps() == [2, 3]  # keep=2
    shutil.rmtree(tmp_path / "ckpt" / "3" / "state")  # the newest step loses its arrays
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    again = Checkpointer(tmp_path / "ckpt", every=1, keep=2, async_save=False)
    step, restored, data_state, config = again.restore_latest(abstract)
    assert step == 2 and data_state == {"next_index": 2} and config == {"seed": 0}
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) * 2)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "checkpoint step 3 is unreadable" in out and "ckpt_unreadable" in out
    assert again.steps() == [2] and [p.name[:2] for p in (tmp_path / "ckpt_unreadable").iterdir()] == ["3-"]
    again.save(3, {"w": state["w"], "step": jnp.int32(3)}, {"next_index": 3}, {"seed": 0}, {})  # no collision
    again.wait()
    assert again.steps() == [2, 3]


def test_unknown_precision_and_mesh_errors_name_the_key():
    with pytest.raises(ValueError, match="train.precision"):
        train_lib.compute_dtype("fp8")
    with pytest.raises(ValueError, match="mesh.shape"):
        sharding.mesh_shape({"data": 3, "fsdp": 1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        sharding.mesh_shape({"dp": 8}, 8)
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


def test_trainable_regex_updates_only_matching_parameters_exactly_as_full_training_would():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    before = nnx.state(model, nnx.Param)
    paths = [train_lib.path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(before)]
    start = [np.asarray(x) for x in jax.tree.leaves(before)]
    batches = [_batch(4), _batch(4, seed=1)]  # the warmup schedule's first step has lr 0
    full = _run(model, _train_cfg(), batches)
    part = _run(model, _train_cfg(trainable="layers/1/mlp/"), batches)
    hits = [i for i, p in enumerate(paths) if "layers/1/mlp/" in p]
    assert {paths[i] for i in hits} == {f"model/layers/1/mlp/{n}_proj/kernel" for n in ("gate", "up", "down")}
    for i in range(len(paths)):
        if i in hits:  # the same Adam steps as when everything trains (no clipping: grads are per-leaf)
            np.testing.assert_allclose(part[i], full[i], atol=1e-6)
            assert not np.array_equal(part[i], start[i])
        else:
            np.testing.assert_array_equal(part[i], start[i])


def test_trainable_keeps_no_optimizer_moments_for_frozen_parameters():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    _, full = train_lib.create_trainer(model, _train_cfg(), "causal_lm", mesh)
    _, part = train_lib.create_trainer(model, _train_cfg(trainable="layers/1/mlp/"), "causal_lm", mesh)
    size = lambda tree: sum(int(np.size(x)) for x in jax.tree.leaves(tree))  # noqa: E731
    mlp = 3 * TINY.hidden_size * TINY.intermediate_size
    assert size(part["opt"]) < 2 * mlp + 16 < size(full["opt"])


def test_trainable_errors_name_the_key():
    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with pytest.raises(ValueError, match=r"train.trainable: 'layers/9/' matches no parameter .*model/"):
        train_lib.create_trainer(model, _train_cfg(trainable="layers/9/"), "causal_lm", mesh)
    with pytest.raises(ValueError, match="train.trainable: .* is not a regular expression"):
        train_lib.create_trainer(model, _train_cfg(trainable="layers/(1"), "causal_lm", mesh)


def test_reinitialize_redraws_only_matching_parameters():
    from kanjax.llama.surgery import reinitialize

    model = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    start = {train_lib.path_string(p): np.asarray(x)
             for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    fresh = {train_lib.path_string(p): np.asarray(x)
             for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(LlamaForCausalLM(TINY, rngs=nnx.Rngs(8)),
                                                                         nnx.Param))}
    n = reinitialize(model, "layers/1/mlp/", seed=7)
    assert n == 3 * TINY.hidden_size * TINY.intermediate_size
    after = {train_lib.path_string(p): np.asarray(x)
             for p, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    for path, value in after.items():
        np.testing.assert_array_equal(value, fresh[path] if "layers/1/mlp/" in path else start[path])
    with pytest.raises(ValueError, match="'nothing' matches no parameter"):
        reinitialize(model, "nothing", seed=0)
