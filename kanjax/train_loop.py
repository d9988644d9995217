"""The training run behind train.py: config → data → model → sharded steps → checkpoints.

`run(config)` validates everything that can be wrong with the input before the first step,
resumes from the newest complete checkpoint in the work dir, and returns a summary dict.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from kanjax import data as data_lib
from kanjax import diagnostics, experiment, metrics as metrics_lib
from kanjax import sharding as shard_lib
from kanjax import train_lib
from kanjax.checkpoint import Checkpointer
from kanjax.kan import count_params
from kanjax.kanify import param_report

log = logging.getLogger("kanjax.train")


def _train_texts(config) -> list[str]:
    """Raw training texts, for counting token frequencies when the vocabulary is trimmed."""
    ds = data_lib.load_raw(config.data, "train")
    if config.data.task == "chat":
        tok = data_lib.load_tokenizer(config.data.tokenizer)
        return [tok.apply_chat_template(m, tokenize=False) for m in ds["messages"]]
    return list(ds["text"])


def _check_batch(config, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.batch_size % shards or config.data.batch_size % jax.process_count():
        raise ValueError(f"data.batch_size={config.data.batch_size} must be divisible by the data×fsdp "
                         f"mesh size ({shards}) and the number of processes ({jax.process_count()})")


def evaluate(trainer, params, arrays, config, step_fn=None, limit: int = 0, per_example: bool = False) -> dict:
    """Loss / accuracy (and perplexity for LM tasks) over a whole split, each example once;
    per_example (classify) adds `correct` (n,) bool in row order."""
    if limit:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    batch_size = config.eval.batch_size
    shards = (jax.process_index(), jax.process_count())
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    rows = []
    for batch in data_lib.eval_batches(arrays, batch_size, shard_index=shards[0], shard_count=shards[1]):
        batch = {k: v for k, v in batch.items() if k != "weight" or config.model.task == "classify"}
        step_fn = step_fn or train_lib.jit_eval_step(trainer, batch, per_example=per_example)
        out = jax.device_get(step_fn(params, shard_lib.host_batch_to_global(batch, trainer.mesh)))
        for k in totals:
            totals[k] += float(out[k])
        if per_example:
            rows.append(out["correct_rows"])
    count = max(totals["count"], 1.0)
    result = {"loss": totals["loss_sum"] / count, "accuracy": totals["correct"] / count, "count": totals["count"]}
    if per_example:
        result["correct"] = np.concatenate(rows)[: data_lib.num_rows(arrays)].astype(bool)
    if config.model.task == "causal_lm":
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    return result


def _startup_summary(config, mesh, model, info) -> str:
    devices = jax.devices()
    return "\n".join([
        f"kanjax train: {len(devices)} device(s) {devices[0].device_kind} on {jax.process_count()} process(es); "
        f"mesh {dict(mesh.shape)}",
        f"precision {config.train.precision} (params {config.model.param_dtype}); task {config.model.task}; "
        f"{info['num_examples']} training examples, batch {config.data.batch_size} × {config.data.seq_len} tokens",
        param_report(model),
    ])


def run(config, *, max_steps: Optional[int] = None, per_example_test: bool = False) -> dict:
    """Train per `config`; `max_steps` stops early (the schedule still follows train.steps): tests
    use it to interrupt and resume. per_example_test adds `test_correct` (n,) bool to the summary."""
    shard_lib.maybe_initialize_distributed(config.distributed.coordinator, config.distributed.num_processes,
                                           config.distributed.process_id)
    experiment.validate(config)
    workdir = Path(config.workdir)
    dtype = train_lib.compute_dtype(config.train.precision)
    mesh = shard_lib.make_mesh(config.mesh.shape.to_dict())
    _check_batch(config, mesh)
    if not config.data.cache_dir:
        config.data.cache_dir = str(workdir / "cache")

    tokenizer = data_lib.load_tokenizer(config.data.tokenizer)
    texts = _train_texts(config) if config.model.vocab_size else None
    model, id_map = experiment.model_from_config(config, tokenizer, texts, dtype=dtype)
    train_iter, info = data_lib.build(config.data, "train", seed=config.seed, tokenizer=tokenizer, id_map=id_map)
    if config.model.task == "classify" and info.get("num_labels", 0) > model.config.num_labels:
        raise ValueError(f"the data has {info['num_labels']} labels but model.num_labels={model.config.num_labels}")
    val_arrays, _ = data_lib.build(config.data, "validation", seed=config.seed, tokenizer=tokenizer, id_map=id_map)
    test_arrays = None
    if config.model.task == "classify":
        test_arrays, _ = data_lib.build(config.data, "test", seed=config.seed, tokenizer=tokenizer, id_map=id_map)
    model.model.remat = bool(config.train.remat)

    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        print(_startup_summary(config, mesh, model, info), flush=True)
        experiment.save_id_map(workdir / "id_map.npy", id_map)
    num_params = count_params(model)
    model_config = model.config
    trainer, state = train_lib.create_trainer(model, config.train, config.model.task, mesh, config.seed)
    del model

    ckpt = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every, keep=config.checkpoint.keep,
                        async_save=config.checkpoint.async_save)
    restored = ckpt.restore_latest(train_lib.abstract_state(trainer, state))
    start = 0
    if restored is not None:
        start, state, data_state, _ = restored
        train_iter.set_state(data_state)
        log.warning("resumed from %s step %d", ckpt.directory, start)
        if is_main:
            print(f"resumed from checkpoint step {start}", flush=True)

    writer = metrics_lib.MetricWriter(workdir)
    first = next(train_iter)
    step_fn = train_lib.jit_train_step(trainer, first)
    diag_every = config.train.get("diagnostics_every", 0)
    diag_fn = diagnostics.jit_projection_stats(trainer, first) if diag_every else None
    cfg_json = experiment.config_to_json(config)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    fpt = metrics_lib.flops_per_token(num_params, model_config.num_hidden_layers, config.data.seq_len,
                                      model_config.hidden_size)
    peak = metrics_lib.peak_flops_per_device(config.train.peak_flops)
    end = config.train.steps if max_steps is None else min(config.train.steps, max_steps)
    skipped_total = 0
    best_val = None
    from tqdm.auto import tqdm

    bar = tqdm(total=end, initial=start, disable=not is_main, desc="train", dynamic_ncols=True)
    window = {"start": time.perf_counter(), "steps": 0, "acc": None}
    batch = first
    t0 = time.perf_counter()
    for step in range(start, end):
        if step > start:
            batch = next(train_iter)
        global_batch = shard_lib.host_batch_to_global(batch, mesh)
        if diag_fn is not None and (step == 0 or (step + 1) % diag_every == 0):
            # Measured on the batch about to be trained on, with the parameters before this step.
            writer.write(step, "diagnostics", jax.device_get(diag_fn(state["params"], global_batch)))
        state, m = step_fn(state, global_batch)
        window["acc"] = m if window["acc"] is None else jax.tree.map(jnp.add, window["acc"], m)
        window["steps"] += 1
        done = step + 1
        if done % config.train.log_every == 0 or done == end:
            acc = jax.device_get(window["acc"])
            elapsed = time.perf_counter() - window["start"]
            n = window["steps"]
            skipped_total += int(acc["skipped"])
            values = {"loss": float(acc["loss"]) / n, "grad_norm": float(acc["grad_norm"]) / n,
                      "accuracy": float(acc["correct"]) / max(float(acc["count"]), 1.0),
                      "skipped_steps": skipped_total, "step_time": elapsed / n,
                      "tokens_per_sec": tokens_per_step * n / elapsed}
            if "loss_scale" in acc:
                values["loss_scale"] = float(m["loss_scale"])
            values["tflops_per_sec"] = fpt * values["tokens_per_sec"] / 1e12
            if peak:
                values["mfu"] = fpt * values["tokens_per_sec"] / (peak * jax.device_count())
            writer.write(done, "train", values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_sec']:.0f}",
                            step_s=f"{values['step_time']:.3f}", skipped=skipped_total)
            window = {"start": time.perf_counter(), "steps": 0, "acc": None}
        bar.update(1)
        if config.eval.every and done % config.eval.every == 0 and done != end:
            val = evaluate(trainer, state["params"], val_arrays, config, limit=config.eval.limit)
            writer.write(done, "validation", val)
            best_val = val["accuracy"] if best_val is None else max(best_val, val["accuracy"])
        if ckpt.should_save(done) and done != end:
            ckpt.save(done, state, train_iter.get_state(), cfg_json)
    bar.close()
    train_time = time.perf_counter() - t0
    if end > start and end not in ckpt.steps():
        ckpt.save(end, state, train_iter.get_state(), cfg_json)
    ckpt.close()

    summary = {"steps": end, "params": num_params, "train_seconds": train_time,
               "skipped_steps": skipped_total}
    if end == config.train.steps:
        val = evaluate(trainer, state["params"], val_arrays, config, limit=config.eval.limit)
        writer.write(end, "validation", val)
        best_val = val["accuracy"] if best_val is None else max(best_val, val["accuracy"])
        summary.update({"val_loss": val["loss"], "val_accuracy": val["accuracy"], "best_val_accuracy": best_val})
        if test_arrays is not None:
            test = evaluate(trainer, state["params"], test_arrays, config, limit=config.eval.test_limit,
                            per_example=per_example_test)
            if per_example_test:
                summary["test_correct"] = test.pop("correct")
            writer.write(end, "test", test)
            summary.update({"test_loss": test["loss"], "test_accuracy": test["accuracy"]})
        if "perplexity" in val:
            summary["val_perplexity"] = val["perplexity"]
    writer.close()
    if is_main:
        metrics_lib.plot_curves(workdir / "metrics.jsonl", workdir / "curves.png", title=str(workdir.name))
        print(metrics_lib.summary_table(summary), flush=True)
    summary["state"] = state
    summary["trainer"] = trainer
    return summary


__all__ = ["run", "evaluate"]
