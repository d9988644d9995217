"""Stop a run that diverged, before it saves or reports anything computed from non-finite numbers.

    watch = DivergenceWatch(precision, max_skipped)
    watch.add(step, metrics)      # each step's device metrics: kept on the device, no sync
    watch.check()                 # at log points and before every save: one transfer; raises
                                  # Diverged naming the first bad step

What counts as diverged:
- fp32 / bf16: a non-finite loss. There is no loss scale to back off, so it does not recover; the
  train step has already dropped that step's update, but the model producing it is ruined.
- fp16: `max_skipped` consecutive skipped steps (non-finite gradients). Under dynamic loss scaling
  a skipped step is routine (the scale halves and the step is retried on the next batch); a long
  run of them means the scale cannot find a finite one.
- any precision: non-finite parameters (`params_finite`, checked before each save).
Exit code: `Diverged.exit_code` (3), distinct from bad input (2) and signals (128 + n).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


class Diverged(RuntimeError):
    """The run's numbers stopped being finite at `step`; nothing from that point was saved."""

    exit_code = 3

    def __init__(self, step: int, message: str):
        self.step = step
        super().__init__(message)


class DivergenceWatch:
    """Host-side record of the loss and skip flag of the steps since the last `check`."""

    def __init__(self, precision: str, max_skipped: int):
        self.precision, self.max_skipped = precision, max_skipped
        self.pending: list[tuple[int, object, object]] = []  # (step, loss, skipped) as device scalars
        self.consecutive = 0  # skipped steps in a row, up to the last checked step

    def add(self, step: int, metrics: dict) -> None:
        """`step`: the 1-based step just taken; metrics: the train step's (device) outputs."""
        self.pending.append((step, metrics["loss"], metrics["skipped"]))

    def check(self, hint: str = "") -> None:
        """Raise Diverged at the first step of the pending ones that shows divergence."""
        pending, self.pending = jax.device_get(self.pending), []
        for step, loss, skipped in pending:
            if self.precision != "fp16" and not math.isfinite(float(loss)):
                raise Diverged(step, f"training diverged at step {step}: the loss is {float(loss)} "
                                     f"(train.precision={self.precision}); nothing after the last checkpoint "
                                     f"was saved. Lower train.lr or raise train.warmup{hint}")
            self.consecutive = self.consecutive + 1 if int(skipped) else 0
            if self.max_skipped and self.consecutive >= self.max_skipped:
                raise Diverged(step, f"training diverged at step {step}: {self.consecutive} steps in a row had "
                                     "non-finite gradients and were skipped (train.max_skipped_steps="
                                     f"{self.max_skipped}); nothing after the last checkpoint was saved{hint}")


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def params_finite(params) -> bool:
    """Whether every floating-point parameter is finite (one reduction on the device)."""
    return bool(jax.device_get(_all_finite(params)))


def check_eval(result: dict, split: str, step: int) -> None:
    """An evaluation whose loss is not finite came from non-finite logits: its accuracy (an argmax
    over NaN) means nothing, so it is not reported as a result."""
    if not math.isfinite(result["loss"]):
        raise Diverged(step, f"the model at step {step} gives non-finite logits on the {split} split "
                             f"(loss {result['loss']}): no {split} metrics are reported; it diverged")


__all__ = ["Diverged", "DivergenceWatch", "params_finite", "check_eval"]
