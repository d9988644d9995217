"""The train step: optimiser, dtype policy, loss scaling, losses, and jitted sharded steps.

The state is an explicit pytree (a dict), functional over `nnx.split`:
    {"params": nnx.State (Param), "opt": optax state, "step": () int32,
     "skipped": () int32 (steps whose non-finite gradients were dropped), "scale": DynamicScale or None}
Nothing in a step is random (no dropout), so the state carries no RNG key.
The model's graph definition is static and closed over by the jitted functions.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training.dynamic_scale import DynamicScale
from jax.sharding import Mesh

from kanjax.llama.surgery import path_string
from kanjax.training import sharding as shard_lib

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp16": jnp.float16}


def compute_dtype(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: {precision!r} is not one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


# ----------------------------------------------------------------------------- optimiser


def learning_rate_schedule(lr: float, steps: int, warmup: int, schedule: str, min_lr_ratio: float = 0.1):
    """optax schedule: linear warmup then cosine decay (or constant) to min_lr_ratio · lr."""
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), max(steps, warmup + 1),
                                                  end_value=lr * min_lr_ratio)
    if schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                    [max(warmup, 1)])
    raise ValueError(f"train.schedule: {schedule!r} is not 'cosine' or 'constant'")


def _decay_mask(params):
    # No weight decay on vectors (norm scales, biases): the usual AdamW convention.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def trainable_mask(params, pattern: str):
    """True for the parameters whose path matches the regex `pattern` (all of them for "")."""
    regex = re.compile(pattern) if pattern else None
    return jax.tree_util.tree_map_with_path(lambda p, _: regex is None or bool(regex.search(path_string(p))),
                                            params)


def check_trainable(params, pattern: str) -> int:
    """Number of trainable parameters; fails naming train.trainable when the regex matches nothing."""
    try:
        mask = trainable_mask(params, pattern)
    except re.error as e:
        raise ValueError(f"train.trainable: {pattern!r} is not a regular expression ({e})") from None
    count = sum(int(x.size) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
    if count == 0:
        example = path_string(jax.tree_util.tree_leaves_with_path(params)[0][0])
        raise ValueError(f"train.trainable: {pattern!r} matches no parameter (paths look like {example!r})")
    return count


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """AdamW with warmup + cosine, global-norm clipping, optional gradient accumulation; with
    train.trainable set, the other parameters get no update and no optimiser state."""
    schedule = learning_rate_schedule(train_cfg.lr, train_cfg.steps, train_cfg.warmup, train_cfg.schedule,
                                      train_cfg.min_lr_ratio)
    chain = []
    if train_cfg.clip and train_cfg.clip > 0:
        chain.append(optax.clip_by_global_norm(train_cfg.clip))
    chain.append(optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                             weight_decay=train_cfg.weight_decay,
                             mask=_decay_mask))
    tx = optax.chain(*chain)
    pattern = train_cfg.trainable
    if pattern:
        labels = lambda params: jax.tree.map(lambda m: "train" if m else "frozen",  # noqa: E731
                                             trainable_mask(params, pattern))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if train_cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum)
    return tx


# ----------------------------------------------------------------------------- losses


def classification_loss(model, batch) -> tuple[jax.Array, dict]:
    """batch: input_ids (b,t), attention_mask (b,t), labels (b,), optional weight (b,)."""
    scores = model(batch["input_ids"], batch["attention_mask"])
    logp = jax.nn.log_softmax(scores.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch["labels"][:, None].astype(jnp.int32), axis=-1)[:, 0]
    weight = batch.get("weight", jnp.ones_like(nll))
    count = jnp.sum(weight)
    correct = jnp.sum((jnp.argmax(scores, -1) == batch["labels"]) * weight)
    loss = jnp.sum(nll * weight) / jnp.maximum(count, 1.0)
    return loss, {"loss_sum": jnp.sum(nll * weight), "correct": correct, "count": count}


def causal_lm_loss(model, batch) -> tuple[jax.Array, dict]:
    """batch: input_ids, targets, loss_mask, segment_ids, positions — all (b,t)."""
    logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = batch["loss_mask"].astype(jnp.float32)
    count = jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * mask)
    loss = jnp.sum(nll * mask) / jnp.maximum(count, 1.0)
    return loss, {"loss_sum": jnp.sum(nll * mask), "correct": correct, "count": count}


LOSSES: dict[str, Callable] = {"classify": classification_loss, "causal_lm": causal_lm_loss}


# ----------------------------------------------------------------------------- state


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The static half of training: model graph, optimiser, loss, mesh and shardings."""

    graphdef: Any
    tx: optax.GradientTransformation
    loss_fn: Callable
    mesh: Mesh
    state_sharding: Any
    use_loss_scale: bool
    trainable: str = ""  # regex over parameter paths; "" = all

    def batch_sharding(self, batch: Mapping[str, Any]):
        return {k: shard_lib.batch_sharding(self.mesh, jnp.ndim(v)) for k, v in batch.items()}


def create_trainer(model: nnx.Module, train_cfg, task: str, mesh: Mesh):
    """(trainer, state): shard the model's parameters over the mesh and build the optimiser state."""
    if task not in LOSSES:
        raise ValueError(f"model.task: {task!r} is not one of {sorted(LOSSES)}")
    graphdef, params = nnx.split(model, nnx.Param)
    leftover = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(leftover):
        raise ValueError(f"the model holds non-parameter state, which the train step does not carry: "
                         f"{list(nnx.to_flat_state(leftover))[:3]}")
    check_trainable(params, train_cfg.trainable)
    tx = make_optimizer(train_cfg)
    use_scale = train_cfg.precision == "fp16"
    param_sharding = shard_lib.state_shardings(params, mesh)
    # The state is donated to the step and must not take the caller's model buffers with it; a
    # replicated device_put may alias the source shard even with may_alias=False, so copy first.
    params = jax.device_put(jax.tree.map(jnp.copy, params), param_sharding)
    rep = shard_lib.replicated(mesh)
    opt_sharding = _optimizer_shardings(tx, params, param_sharding, rep)
    opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
    state = {
        "params": params,
        "opt": opt_state,
        "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
        "skipped": jax.device_put(jnp.zeros((), jnp.int32), rep),
        "scale": jax.device_put(DynamicScale(scale=jnp.asarray(train_cfg.loss_scale,
                                                               jnp.float32)), rep) if use_scale else None,
    }
    state_sharding = {"params": param_sharding, "opt": opt_sharding, "step": rep, "skipped": rep,
                      "scale": jax.tree.map(lambda _: rep, state["scale"]) if use_scale else None}
    trainer = Trainer(graphdef, tx, LOSSES[task], mesh, state_sharding, use_scale, train_cfg.trainable)
    return trainer, state


def _optimizer_shardings(tx, params, param_sharding, replicated):
    """Optimiser leaves that mirror a parameter (Adam moments) take its sharding; scalars such as
    step counts are replicated. Matching is by tree path suffix, which is how optax nests them."""
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_sharding)}
    abstract = jax.eval_shape(tx.init, params)

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for param_key, sharding in by_path.items():
            if key.endswith(param_key):
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract)


# The skip is a branch, not a select of new and old state: selecting keeps both alive, and XLA:CPU then
# copies the donated optimiser moments before updating them in place and recomputes each moment inside
# every consumer; under the branch the update runs as plain in-place fusions
# (benchmarks/results/perf/kan_cost.md).
def _update(tx, grads, opt, params):
    updates, new_opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new_opt


def _keep(grads, opt, params):
    return params, opt


def train_step(trainer: Trainer, state: dict, batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
    """One optimiser step. Non-finite gradients (a non-finite global norm) skip the update (params and
    optimiser state unchanged, bitwise) and are counted; with float16 the DynamicScale backs off."""

    params = state["params"]
    # Frozen parameters enter through stop_gradient: autodiff then skips their gradients and the
    # backward pass below the first trainable layer altogether.
    mask = trainable_mask(params, trainer.trainable) if trainer.trainable else None

    def loss_of(params):
        if mask is not None:
            params = jax.tree.map(lambda m, p: p if m else jax.lax.stop_gradient(p), mask, params)
        return trainer.loss_fn(nnx.merge(trainer.graphdef, params), batch)

    if state["scale"] is not None:
        scale, finite, (loss, aux), grads = state["scale"].value_and_grad(loss_of, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
    else:
        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        # One reduction serves the metric and the check: a NaN or inf anywhere makes the norm non-finite
        # (as does a norm past float32's range, ~1.8e19, a step no clipping would make sense of).
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        scale = None
    new_params, new_opt = jax.lax.cond(finite, functools.partial(_update, trainer.tx), _keep,
                                       grads, state["opt"], params)
    new_state = {
        "params": new_params,
        "opt": new_opt,
        "step": state["step"] + 1,
        "skipped": state["skipped"] + (1 - finite.astype(jnp.int32)),
        "scale": scale,
    }
    metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": 1 - finite.astype(jnp.int32),
               **aux}
    if scale is not None:
        metrics["loss_scale"] = scale.scale
    return new_state, metrics


def eval_step(trainer: Trainer, params, batch) -> dict:
    """Summed metrics (loss_sum, correct, count) of one batch; `weight` masks padding rows."""
    _, aux = trainer.loss_fn(nnx.merge(trainer.graphdef, params), batch)
    return aux


def jit_train_step(trainer: Trainer, example_batch: Mapping[str, Any]):
    """train_step jitted with the state's shardings, the batch split over (data, fsdp), state donated."""
    return jax.jit(
        lambda state, batch: train_step(trainer, state, batch),
        in_shardings=(trainer.state_sharding, trainer.batch_sharding(example_batch)),
        out_shardings=(trainer.state_sharding, shard_lib.replicated(trainer.mesh)),
        donate_argnums=(0,))


def correct_rows(trainer: Trainer, params, batch) -> jax.Array:
    """(b,) bool: whether the classifier's top label is the row's label."""
    scores = nnx.merge(trainer.graphdef, params)(batch["input_ids"], batch["attention_mask"])
    return jnp.argmax(scores, -1) == batch["labels"]


def jit_eval_step(trainer: Trainer, example_batch: Mapping[str, Any], per_example: bool = False):
    """eval_step jitted; per_example (classifiers) adds `correct_rows` (b,) for paired comparisons
    (the forward is shared: XLA computes the model once)."""
    def step(params, batch):
        aux = eval_step(trainer, params, batch)
        return {**aux, "correct_rows": correct_rows(trainer, params, batch)} if per_example else aux

    return jax.jit(
        step,
        in_shardings=(trainer.state_sharding["params"], trainer.batch_sharding(example_batch)),
        out_shardings=shard_lib.replicated(trainer.mesh))


def model_from_state(trainer: Trainer, state: dict) -> nnx.Module:
    return nnx.merge(trainer.graphdef, state["params"])


def abstract_state(trainer: Trainer, state: dict):
    """ShapeDtypeStructs with shardings: the restore target for Orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                        trainer.state_sharding)
