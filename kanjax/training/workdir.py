"""A train.py workdir -> the model it trained, with nothing else: no training data, no source
weights, no config file. Every checkpoint carries the model record (`model_record`): the model's
config.json dict (Llama fields, KAN spec and ranks, trimmed-vocabulary ids) and its task.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from kanjax.hf import pretrained as hf
from kanjax.llama import surgery
from kanjax.training import checkpoint


def model_record(model, task: str, vocab: dict | None = None) -> dict:
    """What rebuilds `model` with nothing else: its config.json dict (Llama fields, KAN spec and
    ranks, trimmed-vocabulary ids) and its task. Checkpoints store it (`kanjax.training.checkpoint`)."""
    return {"task": task, "config": hf.model_config_dict(model, vocab=vocab)}


def model_from_record(record: dict, *, dtype=jnp.float32):
    """The model of a record, with shapes only (restore parameters into it), and its id map."""
    model = hf.abstract_model(record["config"], task=record["task"], dtype=dtype)
    vocab = record["config"].get("kanjax_vocab")
    surgery.attach_vocab(model, vocab)  # an export of it then carries the id map (hf.save_pretrained)
    return model, None if vocab is None else surgery.id_map_from_record(vocab)


def load_workdir(workdir: str | Path, step: int | None = None, *, dtype=jnp.float32):
    """(model, id_map or None, step) of a train.py work dir: its newest (or `step`) checkpoint's
    model record and parameters. Reads nothing but the work dir: no training data, no source
    weights, no config file."""
    from flax import nnx

    folder = Path(workdir) / "checkpoints"
    steps = checkpoint.finished_steps(folder)
    if not steps:
        raise FileNotFoundError(f"{folder} holds no finished checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{folder} has no checkpoint for step {step} (it has {steps})")
    model, id_map = model_from_record(checkpoint.read_model_record(folder, step), dtype=dtype)
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, checkpoint.read_params(folder, step))
    nnx.update(model, params)
    return model, id_map, step
