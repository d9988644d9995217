"""The run config (configs/base.py's schema): command-line overrides, cross-field checks, JSON.

Every key lives in configs/base.py with its default; library code reads keys, never supplies
defaults for them. `apply_overrides` is how tests, benchmarks and notebooks set "section.key"
values; train.py's --config.<key>=value flags go through ml_collections' own parser, and
`validate` then checks what no per-key type check can.
"""

from __future__ import annotations

import difflib
import json

import jax.numpy as jnp
import ml_collections

from kanjax.errors import InputError
from kanjax.llama.kan_spec import KANSpec

TASK_PAIRS = {"classify": ("classify",), "causal_lm": ("chat", "text")}
PARAM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(InputError):
    """A config key or value that cannot work, named by its full dotted path."""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key as a dotted path ("train.steps", "mesh.shape.data", ...)."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key != "basis_params":
            out += flat_keys(value, path + ".")
        else:
            out.append(path)
    return out


def unknown_key_error(key: str, config: ml_collections.ConfigDict) -> ConfigError:
    """'unknown config key train.stepz; did you mean train.steps?'"""
    near = difflib.get_close_matches(key, flat_keys(config), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else "; the keys are listed in configs/base.py"
    return ConfigError(f"unknown config key {key}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, flags: dict) -> ml_collections.ConfigDict:
    """Set flat "section.key" values in place; an unknown key fails naming it and the nearest valid
    one (ml_collections' update_from_flattened_dict would add it silently)."""
    for key, value in flags.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise unknown_key_error(key, config)
            node = node[p]
        if leaf not in node and not (parents and parents[-1] == "basis_params"):
            raise unknown_key_error(key, config)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config key {key}: {e}") from None
    return config


def kan_spec(kan_cfg) -> KANSpec:
    """The KANSpec of a config's `kan` section (unknown or bad fields fail, naming them)."""
    return KANSpec.from_dict(kan_cfg.to_dict() if hasattr(kan_cfg, "to_dict") else dict(kan_cfg))


def validate(config: ml_collections.ConfigDict) -> None:
    """Cross-field checks that ml_collections' per-key type checks cannot make."""
    m, d, t = config.model, config.data, config.train
    if m.task not in TASK_PAIRS:
        raise ConfigError(f"model.task: {m.task!r} is not one of {sorted(TASK_PAIRS)}")
    if d.task not in TASK_PAIRS[m.task]:
        raise ConfigError(f"data.task={d.task!r} does not fit model.task={m.task!r} "
                          f"(expected one of {TASK_PAIRS[m.task]})")
    if m.param_dtype not in PARAM_DTYPES:
        raise ConfigError(f"model.param_dtype: {m.param_dtype!r} is not one of {sorted(PARAM_DTYPES)}")
    for key, value in (("train.steps", t.steps), ("data.batch_size", d.batch_size), ("data.seq_len", d.seq_len),
                       ("train.grad_accum", t.grad_accum)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    # Checked here, not where they are used: the run would otherwise stop after loading data and model.
    for key, value, allowed in (("train.precision", t.precision, ("fp32", "bf16", "fp16")),
                                ("train.schedule", t.schedule, ("cosine", "constant"))):
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    if m.num_layers < 0 or m.vocab_size < 0:
        raise ConfigError("model.num_layers and model.vocab_size must be >= 0 (0 = keep all)")
    try:
        kan_spec(config.kan)
    except ValueError as e:  # KANSpec names the field ("kan.basis: ..."): keep its words
        raise ConfigError(str(e)) from None


def config_to_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def json_value(config_json: dict, dotted: str):
    """The value at "section.key" of a config's JSON (`config_to_json`); None where it is absent."""
    for part in dotted.split("."):
        config_json = config_json.get(part) if isinstance(config_json, dict) else None
    return config_json


__all__ = ["InputError", "ConfigError", "apply_overrides", "kan_spec", "validate", "config_to_json", "json_value", "flat_keys",
           "TASK_PAIRS", "PARAM_DTYPES"]
