"""The training run behind train.py: config → data → model → sharded steps → checkpoints.

    setup(config)   check everything that can be wrong before the first step, build data, model,
                    trainer and checkpointer, resume from the newest readable checkpoint
    train(r, end)   the steps, with logging, validation, diagnostics and checkpoints
    finish(r, ...)  the final validation (and test) evaluation, curves and the summary
`run(config)` is the three in a row; it returns the summary dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kanjax.data import pipeline as data_lib
from kanjax.kan.layer import count_params
from kanjax.llama import surgery
from kanjax.llama.kanify import param_report
from kanjax.training import build, compile_cache, diagnostics, resume
from kanjax.training import config as config_lib
from kanjax.training import metrics as metrics_lib
from kanjax.training import sharding as shard_lib
from kanjax.training import step as train_lib
from kanjax.training.checkpoint import Checkpointer, finished_steps, newest_config
from kanjax.training.divergence import Diverged, DivergenceWatch, check_eval, params_finite
from kanjax.training.signals import Interrupted, StopSignals
from kanjax.training.workdir_lock import WorkdirLock

log = logging.getLogger("kanjax.train")

# Keys a resumed run may change without a word: where things are read and written, how often it
# logs, evaluates and saves, how long it trains. Everything else shapes the model, the data or the
# optimisation, and a resume with it changed must be asked for (checkpoint.allow_changed).
_FREE_TO_CHANGE = ("workdir", "data.path", "data.name", "data.tokenizer", "data.cache_dir", "data.tfds_dir",
                   "data.num_workers", "model.source", "model.config", "train.steps", "train.log_every",
                   "train.diagnostics_every", "train.peak_flops", "train.max_skipped_steps", "eval.", "checkpoint.",
                   "distributed.", "mesh.", "compile_cache", "kan.recompute")


def evaluate(eval_fn, params, arrays, config, mesh, limit: int = 0, progress: str = "") -> dict:
    """Loss / accuracy (and perplexity for LM tasks) over a whole split, each example once.
    eval_fn: `train_lib.jit_eval_step`; with per_example it also gives `correct` (n,) bool.
    progress: a progress-bar label (the final passes over a whole split take minutes on a CPU)."""
    from tqdm.auto import tqdm

    if limit:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    rows = []
    size = eval_batch_rows(config, mesh, data_lib.num_rows(arrays))
    batches = data_lib.eval_batches(arrays, size, shard_index=jax.process_index(), shard_count=jax.process_count())
    total = -(-data_lib.num_rows(arrays) // size)
    for batch in tqdm(batches, total=total, desc=progress, disable=not progress or jax.process_index() != 0,
                      dynamic_ncols=True, leave=False):
        batch = {k: v for k, v in batch.items() if k != "weight" or config.model.task == "classify"}
        out = jax.device_get(eval_fn(params, shard_lib.host_batch_to_global(batch, mesh)))
        for k in totals:
            totals[k] += float(out[k])
        if "correct_rows" in out:
            rows.append(out["correct_rows"])
    count = max(totals["count"], 1.0)
    result = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count, "count": totals["count"]}
    if rows:
        result["correct"] = np.concatenate(rows)[: data_lib.num_rows(arrays)].astype(bool)
    if config.model.task == "causal_lm":
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    return result


@dataclasses.dataclass
class Run:
    """Everything a run holds between setup, the steps and the final evaluation."""

    config: Any
    workdir: Path
    mesh: Any
    trainer: train_lib.Trainer
    state: dict
    start: int
    train_iter: Any
    first_batch: dict
    val_arrays: dict
    test_arrays: dict | None
    ckpt: Checkpointer
    writer: metrics_lib.MetricWriter
    record: dict  # the model record every checkpoint carries (kanjax.training.workdir.model_record)
    num_params: int
    flops_per_token: float
    is_main: bool
    lock: WorkdirLock | None = None  # this run's hold on the workdir (process 0); `run` releases it


def _batch_unit(mesh) -> int:
    """What every global batch's row count must be a multiple of: the data×fsdp shards and the processes."""
    return math.lcm(mesh.shape["data"] * mesh.shape["fsdp"], jax.process_count())


def _check_batch(config, mesh) -> None:
    shards, unit = mesh.shape["data"] * mesh.shape["fsdp"], _batch_unit(mesh)
    for key, value in (("data.batch_size", config.data.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if value % unit:
            raise config_lib.ConfigError(f"{key}={value} must be divisible by the data×fsdp mesh size ({shards}) "
                                         f"and the number of processes ({jax.process_count()})")


def eval_batch_rows(config, mesh, n: int) -> int:
    """Rows per evaluation batch for a split of n rows: eval.batch_size, or fewer where the whole split
    fits in fewer (n rounded up to `_batch_unit`), so that a small split (a few packed rows of held-out
    chat) is not computed as a full batch of padding. Larger splits keep eval.batch_size throughout,
    their last batch padded, so they compile one shape."""
    unit = _batch_unit(mesh)
    return min(config.eval.batch_size, max(unit, -(-n // unit) * unit))


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and this run's, except the
    ones a resume may change freely and those listed in checkpoint.allow_changed."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "basis_params":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(saved), flat(current)
    allowed = tuple(k.strip() for k in str(current.get("checkpoint", {}).get("allow_changed", "")).split(",")
                    if k.strip())
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not k.startswith(_FREE_TO_CHANGE + allowed))


def _startup_summary(config, mesh, model, info) -> str:
    devices = jax.devices()
    return "\n".join([
        f"kanjax train: {len(devices)} device(s) {devices[0].device_kind} on {jax.process_count()} process(es); "
        f"mesh {dict(mesh.shape)}",
        f"precision {config.train.precision} (params {config.model.param_dtype}); task {config.model.task}; "
        f"{info['num_examples']} training examples, batch {config.data.batch_size} × {config.data.seq_len} tokens",
        param_report(model),
    ])


def setup(config) -> Run:
    """Validate, lock the workdir (`kanjax.training.workdir_lock`: before anything is written; a busy one
    stops here), build data and model, create the trainer, resume from the newest readable
    checkpoint. The caller releases `Run.lock` (`run` does)."""
    compile_cache.enable(config.get("compile_cache", ""))  # before anything compiles
    shard_lib.maybe_initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                                           config.distributed.process_id)
    config_lib.validate(config)
    workdir = Path(config.workdir)
    mesh = shard_lib.make_mesh(config.mesh.shape.to_dict())
    _check_batch(config, mesh)
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        r = _setup_locked(config, workdir, mesh)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    r.lock = lock
    return r


def _setup_locked(config, workdir: Path, mesh) -> Run:
    if not config.data.cache_dir:
        config.data.cache_dir = str(workdir / "cache")
    cfg_json = config_lib.config_to_json(config)
    saved = newest_config(workdir / "checkpoints")
    if saved is not None:  # before anything loads: a resume with another model or data is refused
        diff = changed_keys(saved, cfg_json)
        if diff:
            value = config_lib.json_value
            shown = "; ".join(f"{k}: {value(saved, k)!r} → {value(cfg_json, k)!r}" for k in diff)
            raise config_lib.ConfigError(
                f"{workdir} holds checkpoints of a run with other settings ({shown}). Use another workdir, or "
                f"resume anyway with --config.checkpoint.allow_changed={','.join(diff)}")
    done_steps = finished_steps(workdir / "checkpoints")
    if done_steps:
        resume.check_steps(workdir, done_steps[-1], config.train.steps)
    vocab = resume.recorded_vocab(workdir / "checkpoints", saved, cfg_json) if saved is not None else None

    if config.data.path:  # a missing local file is named before any download or model build
        data_lib.split_files(Path(config.data.path))
    tokenizer = data_lib.load_tokenizer(config.data.tokenizer)
    model, id_map, record = build.model_from_config(config, tokenizer, vocab=vocab,
                                                         dtype=train_lib.compute_dtype(config.train.precision))
    # Labels outside the classifier's range fail here, before any step, naming file and line.
    labels = config.model.num_labels if config.model.task == "classify" else None
    kw = dict(seed=config.seed, tokenizer=tokenizer, id_map=id_map, num_labels=labels)
    train_iter, info = data_lib.build(config.data, "train", **kw)
    val_arrays, _ = data_lib.build(config.data, "validation", **kw)
    test_arrays = data_lib.build(config.data, "test", **kw)[0] if config.model.task == "classify" else None
    model.model.remat = bool(config.train.remat)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        print(_startup_summary(config, mesh, model, info), flush=True)
        # The workdir carries its tokenizer: evaluation and export need nothing else (eval_models).
        if not (workdir / "tokenizer" / "tokenizer_config.json").is_file():
            tokenizer.save_pretrained(str(workdir / "tokenizer"))
    num_params = count_params(model)
    fpt = metrics_lib.flops_per_token(num_params, model.config.num_hidden_layers, config.data.seq_len,
                                      model.config.hidden_size)
    trainer, state = train_lib.create_trainer(model, config.train, config.model.task, mesh)
    del model

    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=config.checkpoint.async_save)
    restored = ckpt.restore_latest(train_lib.abstract_state(trainer, state))
    start = 0
    if restored is not None:
        start, state, data_state, _ = restored
        train_iter.set_state(data_state)
        if is_main:
            print(f"resumed from checkpoint step {start}", flush=True)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    return Run(config, workdir, mesh, trainer, state, start, train_iter, next(train_iter), val_arrays, test_arrays,
               ckpt, writer, record, num_params, fpt, is_main)


def train(r: Run, end: int, stop: StopSignals | None = None) -> float:
    """Steps r.start … end−1; returns the seconds they took.

    Raises `Diverged` at the first non-finite loss (fp32/bf16), after train.max_skipped_steps
    skipped steps in a row, or on non-finite parameters, checked at each log point and before
    every save: no checkpoint holds what followed. With `stop` (its `defer` set by the caller), a
    SIGTERM/SIGINT ends the step in flight, saves it and raises `Interrupted`."""
    from tqdm.auto import tqdm

    config, cfg_json = r.config, config_lib.config_to_json(r.config)
    step_fn = train_lib.jit_train_step(r.trainer, r.first_batch)
    eval_fn = train_lib.jit_eval_step(r.trainer, _example_eval_batch(r))
    diag_every = config.train.diagnostics_every
    diag_fn = diagnostics.jit_projection_stats(r.trainer, r.first_batch) if diag_every else None
    tokens_per_step = config.data.batch_size * config.data.seq_len
    peak = metrics_lib.peak_flops_per_device(config.train.peak_flops)
    bar = tqdm(total=end, initial=r.start, disable=not r.is_main, desc="train", dynamic_ncols=True)
    window = {"start": time.perf_counter(), "steps": 0, "acc": None}
    watch = DivergenceWatch(config.train.precision, config.train.max_skipped_steps)
    batch = r.first_batch
    t0 = time.perf_counter()
    try:
        for step in range(r.start, end):
            if step > r.start:
                batch = next(r.train_iter)
            global_batch = shard_lib.host_batch_to_global(batch, r.mesh)
            if diag_fn is not None and (step == 0 or (step + 1) % diag_every == 0):
                # Measured on the batch about to be trained on, with the parameters before this step.
                r.writer.write(step, "diagnostics", jax.device_get(diag_fn(r.state["params"], global_batch)))
            r.state, m = step_fn(r.state, global_batch)
            window["acc"] = m if window["acc"] is None else jax.tree.map(jnp.add, window["acc"], m)
            window["steps"] += 1
            done = step + 1
            watch.add(done, m)
            bar.update(1)
            if done % config.train.log_every == 0 or done == end:
                acc = jax.device_get(window["acc"])
                elapsed, n = time.perf_counter() - window["start"], window["steps"]
                values = {"loss": float(acc["loss"]) / n, "grad_norm": float(acc["grad_norm"]) / n,
                          "accuracy": float(acc["correct"]) / max(float(acc["count"]), 1.0),
                          "skipped_steps": int(jax.device_get(r.state["skipped"])), "step_time": elapsed / n,
                          "tokens_per_sec": tokens_per_step * n / elapsed}
                if "loss_scale" in acc:
                    values["loss_scale"] = float(m["loss_scale"])
                values["tflops_per_sec"] = r.flops_per_token * values["tokens_per_sec"] / 1e12
                if peak:
                    values["mfu"] = r.flops_per_token * values["tokens_per_sec"] / (peak * jax.device_count())
                r.writer.write(done, "train", values)
                bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_sec']:.0f}",
                                step_s=f"{values['step_time']:.3f}", skipped=values["skipped_steps"])
                window = {"start": time.perf_counter(), "steps": 0, "acc": None}
                watch.check(_last_good(r))
            # The final step's validation belongs to `finish`; a run stopped early (--stop_after)
            # validates at its last step like any other, so a resume never lacks a scheduled one.
            if config.eval.every and done % config.eval.every == 0 and done != config.train.steps:
                watch.check(_last_good(r))
                val = evaluate(eval_fn, r.state["params"], r.val_arrays, config, r.mesh, limit=config.eval.limit)
                check_eval(val, "validation", done)
                r.writer.write(done, "validation", val)
            if r.ckpt.should_save(done) and done != end:
                _save(r, done, watch, cfg_json)
            r.ckpt.poll()  # a background save that failed stops the run here, not at the next save
            if stop is not None and stop.requested is not None:
                if done not in r.ckpt.steps():
                    _save(r, done, watch, cfg_json)
                r.ckpt.close()
                r.writer.close()
                raise Interrupted(stop.requested, done, f"stopped by {_signal_name(stop.requested)} after step "
                                                        f"{done} of {end}; checkpoint {done} saved in {r.workdir}: "
                                                        "run the same command again to resume")
    finally:
        bar.close()  # before any message: it then starts on a line of its own
    seconds = time.perf_counter() - t0
    if end > r.start and end not in r.ckpt.steps():
        _save(r, end, watch, cfg_json)
    r.ckpt.close()
    return seconds


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _last_good(r: Run) -> str:
    steps = r.ckpt.steps()
    return f" (the last checkpoint is step {steps[-1]})" if steps else " (no checkpoint was saved)"


def _save(r: Run, step: int, watch: DivergenceWatch, cfg_json: dict) -> None:
    """Save `step` once the steps since the last check and the parameters are known finite."""
    watch.check(_last_good(r))
    if not params_finite(r.state["params"]):
        raise Diverged(step, f"training diverged: the parameters at step {step} are not finite; not saved"
                             f"{_last_good(r)}")
    r.ckpt.save(step, r.state, r.train_iter.get_state(), cfg_json, r.record)


def _example_eval_batch(r: Run) -> dict:
    """One batch of the validation split's shape (what the jitted eval step is compiled for)."""
    batch = next(data_lib.eval_batches(r.val_arrays, r.config.eval.batch_size, shard_index=jax.process_index(),
                                       shard_count=jax.process_count()))
    return {k: v for k, v in batch.items() if k != "weight" or r.config.model.task == "classify"}


def finish(r: Run, end: int, train_seconds: float, per_example_test: bool = False) -> dict:
    """The summary; at the end of the schedule also the final validation and test evaluations."""
    config = r.config
    summary = {"steps": end, "params": r.num_params, "train_seconds": train_seconds,
               "skipped_steps": int(jax.device_get(r.state["skipped"]))}
    if end == config.train.steps:
        eval_fn = train_lib.jit_eval_step(r.trainer, _example_eval_batch(r), per_example=per_example_test)
        val = evaluate(eval_fn, r.state["params"], r.val_arrays, config, r.mesh, limit=config.eval.limit,
                       progress="validation")
        check_eval(val, "validation", end)
        val.pop("correct", None)
        r.writer.write(end, "validation", val)
        rows = metrics_lib.read_metrics(r.workdir / "metrics.jsonl") if r.is_main else []
        best = max([row["accuracy"] for row in rows if row["split"] == "validation"] + [val["accuracy"]])
        summary.update({"val_loss": val["loss"], "val_accuracy": val["accuracy"], "best_val_accuracy": best})
        if r.test_arrays is not None:
            test = evaluate(eval_fn, r.state["params"], r.test_arrays, config, r.mesh, limit=config.eval.test_limit,
                            progress="test")
            check_eval(test, "test", end)
            if per_example_test:
                summary["test_correct"] = test.pop("correct")
            r.writer.write(end, "test", test)
            summary.update({"test_loss": test["loss"], "test_accuracy": test["accuracy"]})
        if "perplexity" in val:
            summary["val_perplexity"] = val["perplexity"]
    r.writer.close()
    if r.is_main:
        metrics_lib.plot_curves(r.workdir / "metrics.jsonl", r.workdir / "curves.png", title=str(r.workdir.name))
        table = metrics_lib.summary_table(summary)
        (r.workdir / "summary.md").write_text(table + "\n")  # the table printed below, kept with the run
        print(table, flush=True)
    vocab = r.record["config"].get("kanjax_vocab")  # the trimmed vocabulary's old → new id map, if any
    return {**summary, "state": r.state, "trainer": r.trainer, "id_map": surgery.id_map_from_record(vocab)}


def run(config, *, max_steps: int | None = None, per_example_test: bool = False) -> dict:
    """Train per `config`; `max_steps` stops early (the schedule still follows train.steps): tests
    use it to interrupt and resume. per_example_test adds `test_correct` (n,) bool to the summary.

    SIGTERM/SIGINT: before the first step (loading, compiling) and after the last checkpoint
    (final evaluation) they raise `Interrupted` at once; during the steps the step in flight ends
    and is saved first (`train`). A second signal exits at once. The workdir's lock is released
    however the run ends."""
    with StopSignals() as stop:
        r = setup(config)
        try:
            end = config.train.steps if max_steps is None else min(config.train.steps, max_steps)
            stop.defer = True
            seconds = train(r, end, stop)
            stop.defer = False
            if stop.requested is not None:  # it came during the last step, which is saved: stop here
                raise Interrupted(stop.requested, end, f"stopped by {_signal_name(stop.requested)} after step "
                                                       f"{end}, its checkpoint saved; the final evaluation was "
                                                       "not run (the same command again runs it)")
            return finish(r, end, seconds, per_example_test)
        except BaseException:
            stop.defer = False
            with contextlib.suppress(Exception):  # the error in hand is the one to report
                r.ckpt.close()  # a save already in flight completes (it is a good one); idempotent
                r.writer.close()
            raise
        finally:
            if r.lock is not None:
                r.lock.release()


__all__ = ["run", "setup", "train", "finish", "evaluate", "changed_keys", "Run"]
