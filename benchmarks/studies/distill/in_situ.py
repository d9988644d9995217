"""Spliced models in situ: how fitted MLP blocks behave once put back into the whole model.

Shape letters as in benchmarks.studies.distill.fit (n windows, t window length, d model width, N = n·t tokens).
Everything runs from the residual stream recorded entering the first replaced block
(`Recording.resid`), so the blocks before it, identical in every spliced model, never rerun.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.studies.distill.fit import FitConfig, Recording, _epochs, _optimizer, _run, run_blocks


def compare_in_situ(teacher, student, rec: Recording, windows: np.ndarray, batch_size: int = 4) -> dict:
    """How errors compound: the teacher and a spliced student run blocks resid_layer.. to the end on the
    same recorded windows (the residual entering the first replaced block is recorded, identical for both).

    -> {"blocks": {k: {"mlp_err2", "y2", "h_err2", "h2"}}, "kl", "top1", "tokens"}, every entry a list of
    per-window sums: mlp_err2 = Σ‖y'_k − y_k‖² (the student's MLP on its own inputs vs the teacher's MLP
    output), h_err2 = Σ‖h'_k − h_k‖² (the residual stream after block k), kl = Σ KL(teacher ‖ student)
    of the next-token distributions, top1 = tokens where both predict the same next token.
    """
    start, stop = rec.manifest["resid_layer"], teacher.config.num_hidden_layers
    layers = tuple(range(start, stop))
    resid = rec.resid
    out = {"blocks": {k: {"mlp_err2": [], "y2": [], "h_err2": [], "h2": []} for k in layers},
           "kl": [], "top1": [], "tokens": []}
    for s in range(0, len(windows), batch_size):
        w = np.asarray(windows[s:s + batch_size])
        h0 = jnp.asarray(np.asarray(resid[w], np.float32))
        _, ref, ref_out = run_blocks(teacher, h0, start, stop, layers, logits=True)
        _, new, new_out = run_blocks(student, h0, start, stop, layers, logits=True)
        for k in layers:
            row = out["blocks"][k]
            for key, a, b in (("mlp_err2", new[k][1], ref[k][1]), ("h_err2", new[k][2], ref[k][2])):
                row[key] += np.asarray(jnp.sum(jnp.square(a - b), axis=(1, 2)), np.float64).tolist()
            row["y2"] += np.asarray(jnp.sum(jnp.square(ref[k][1]), axis=(1, 2)), np.float64).tolist()
            row["h2"] += np.asarray(jnp.sum(jnp.square(ref[k][2]), axis=(1, 2)), np.float64).tolist()
        p_log, q_log = jax.nn.log_softmax(ref_out["logits"]), jax.nn.log_softmax(new_out["logits"])
        kl = jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)
        out["kl"] += np.asarray(jnp.sum(kl, axis=1), np.float64).tolist()
        same = jnp.argmax(ref_out["logits"], -1) == jnp.argmax(new_out["logits"], -1)
        out["top1"] += np.asarray(jnp.sum(same, axis=1)).tolist()
        out["tokens"] += [int(same.shape[1])] * len(w)
    return out


def sequential_targets(teacher, student, rec: Recording, layer: int, batch_size: int = 8
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Data for fitting block `layer` on the spliced model's own activations -> x', target (N, d) float32.

    `student` has the blocks before `layer` replaced (block `layer` still the teacher's). x' is the MLP
    input block `layer` sees in the student; the target y_k + (h_k − h'_k) (teacher MLP output plus the
    residual-stream gap the earlier replacements left) is what the MLP must output for the student's
    residual after block `layer` to equal the teacher's: a perfect fit undoes the upstream error.
    """
    start = rec.manifest["resid_layer"]
    n, t, d = rec.manifest["windows"], rec.seq_len, rec.manifest["hidden"]
    xs, targets = np.empty((n, t, d), np.float32), np.empty((n, t, d), np.float32)
    resid = rec.resid
    for s in range(0, n, batch_size):
        h0 = jnp.asarray(np.asarray(resid[s:s + batch_size], np.float32))
        _, ref, _ = run_blocks(teacher, h0, start, layer + 1, (layer,))
        _, new, _ = run_blocks(student, h0, start, layer + 1, (layer,))
        xs[s:s + batch_size] = np.asarray(new[layer][0])
        targets[s:s + batch_size] = np.asarray(new[layer][1] + (ref[layer][2] - new[layer][2]))
    return xs.reshape(-1, d), targets.reshape(-1, d)


def _trainable(chosen: set[int]):
    def trainable(path, value):
        parts = list(path)  # ("model", "layers", 25, "mlp", "up_proj", ...)
        return (isinstance(value, nnx.Param) and "mlp" in parts and "layers" in parts
                and parts[parts.index("layers") + 1] in chosen)

    return trainable


def finetune_grid(model, rec: Recording, layers: Sequence[int], windows: np.ndarray, cfg: FitConfig,
                  lrs: Sequence[float], batch_windows: int = 4):
    """Train the MLPs of `layers` end to end at each lr of `lrs`, every run from `model` with cfg's
    budget and seed (the same windows in the same order): next-token cross-entropy of the whole model
    on recorded windows, run from the recorded residual (only blocks resid_layer.. and the head run).
    Yields (lr, new model, {"train_loss": [mean per cfg.log_every steps], "seconds", "step_seconds",
    "tokens"}) per lr. cfg.lr and cfg.batch_tokens are ignored: a step takes `batch_windows` windows,
    and the lr is an argument of one compiled step (the schedule's shape at peak 1, scaled by it:
    AdamW's update, weight decay included, is linear in the lr), so the grid compiles once.
    step_seconds: the mean wall time of the steps after the first (which compiles), or None."""
    start, stop = rec.manifest["resid_layer"], model.config.num_hidden_layers
    graphdef, params0, rest = nnx.split(model, _trainable({int(k) for k in layers}), ...)
    tx = _optimizer(dataclasses.replace(cfg, lr=1.0))

    @jax.jit
    def step(params, opt, rest, h0, ids, lr):  # rest (embeddings, frozen blocks) as an argument, not a constant
        def loss_fn(p):
            _, _, out = _run(nnx.merge(graphdef, p, rest), h0, start=start, stop=stop, capture=(), from_ids=False,
                             logits=True)
            logp = jax.nn.log_softmax(out["logits"][:, :-1])
            return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
        return optax.apply_updates(params, updates), opt, loss

    tokens, resid = rec.tokens, rec.resid
    for lr in lrs:
        params, opt = params0, tx.init(params0)
        batches = _epochs(np.asarray(windows), batch_windows, np.random.default_rng(cfg.seed))
        losses, window, t0, t1 = [], [], time.perf_counter(), None
        for s in range(cfg.steps):
            w = next(batches)
            params, opt, loss = step(params, opt, rest, jnp.asarray(np.asarray(resid[w], np.float32)),
                                     jnp.asarray(tokens[w]), jnp.float32(lr))
            window.append(loss)
            if s == 0:
                jax.block_until_ready(loss)
                t1 = time.perf_counter()
            if (s + 1) % cfg.log_every == 0 or s + 1 == cfg.steps:
                losses.append(float(np.mean(jax.device_get(window))))
                window = []
        jax.block_until_ready(params)
        seconds = time.perf_counter() - t0
        tuned = nnx.clone(model)
        nnx.update(tuned, params)
        yield lr, tuned, {"train_loss": losses, "seconds": seconds,
                          "step_seconds": (time.perf_counter() - t1) / (cfg.steps - 1) if cfg.steps > 1 else None,
                          "tokens": cfg.steps * batch_windows * rec.seq_len}


def finetune(model, rec: Recording, layers: Sequence[int], windows: np.ndarray, cfg: FitConfig,
             batch_windows: int = 4):
    """Train the MLPs of `layers` end to end at cfg.lr (finetune_grid with one lr) -> (new model,
    {"train_loss": [...], "seconds", "tokens"})."""
    _, tuned, info = next(finetune_grid(model, rec, layers, windows, cfg, [cfg.lr], batch_windows))
    info.pop("step_seconds")
    return tuned, info


@functools.partial(jax.jit, static_argnames=("graphdef", "start", "stop"))
def _window_nll(graphdef, state, h0, ids, *, start: int, stop: int):
    _, _, out = _run(nnx.merge(graphdef, state), h0, start=start, stop=stop, capture=(), from_ids=False, logits=True)
    logp = jax.nn.log_softmax(out["logits"][:, :-1].astype(jnp.float32))
    return -jnp.sum(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0], axis=1)


def next_token_loss(model, rec: Recording, windows: np.ndarray, batch_windows: int = 8) -> dict:
    """The next-token loss finetune trains on, on recorded windows (run from the recorded residual)
    -> {"loss": mean nll per predicted token, "nll": per-window sums, "tokens": per-window counts}.
    The last batch is padded with copies (one compiled shape)."""
    start, stop = rec.manifest["resid_layer"], model.config.num_hidden_layers
    graphdef, state = nnx.split(model)
    windows, tokens, resid = np.asarray(windows), rec.tokens, rec.resid
    nll = []
    for s in range(0, len(windows), batch_windows):
        w = windows[s:s + batch_windows]
        rows = len(w)
        w = np.concatenate([w, np.repeat(w[-1:], batch_windows - rows)]) if rows < batch_windows else w
        out = _window_nll(graphdef, state, jnp.asarray(np.asarray(resid[w], np.float32)), jnp.asarray(tokens[w]),
                          start=start, stop=stop)
        nll += np.asarray(out, np.float64)[:rows].tolist()
    counts = [rec.seq_len - 1] * len(nll)
    return {"loss": sum(nll) / max(sum(counts), 1), "nll": nll, "tokens": counts}


def logit_gap(a, b, rec: Recording, windows: np.ndarray) -> float:
    """max |logits(a) − logits(b)| over recorded windows, both run from the recorded residual (a start
    that should reproduce the pretrained model is checked against it)."""
    start, stop = rec.manifest["resid_layer"], a.config.num_hidden_layers
    h0 = jnp.asarray(np.asarray(rec.resid[np.asarray(windows)], np.float32))
    _, _, la = run_blocks(a, h0, start, stop, logits=True)
    _, _, lb = run_blocks(b, h0, start, stop, logits=True)
    return float(jnp.max(jnp.abs(la["logits"].astype(jnp.float32) - lb["logits"].astype(jnp.float32))))


__all__ = ["compare_in_situ", "sequential_targets", "finetune", "finetune_grid", "next_token_loss", "logit_gap"]
