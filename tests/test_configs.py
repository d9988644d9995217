"""Every config file under configs/ loads, validates, and builds its model (shapes only)."""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from kanjax.kan.layer import count_params
from kanjax.llama.kanify import build_model
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from kanjax.training import config as config_lib
from tests.helpers.train import REPO_ROOT

CONFIG_FILES = sorted(p for p in (REPO_ROOT / "configs").glob("*.py") if p.name != "__init__.py")


def _load(path):
    spec = importlib.util.spec_from_file_location(f"cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_family_has_a_config():
    from kanjax.kan.basis_terms import BASES

    names = {p.stem for p in CONFIG_FILES}
    for family in BASES:
        assert f"kan_{family}" in names or (family == "chebyshev2" and "kan_cheb2" in names), family
    for needed in ("base", "linear", "kan_cheb2", "kan_cheb2_parallel", "kan_cheb2_sequential",
                   "kan_cheb2_nosilu", "full_last5_mlp", "full_linear", "full_linear_reinit", "full_kan_reinit"):
        assert needed in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds_its_model(path):
    config = _load(path)
    config_lib.validate(config)
    spec = config_lib.kan_spec(config.kan)
    shape = LlamaConfig()  # SmolLM2-135M: what every config's source has
    if config.model.num_layers:
        shape = dataclasses.replace(shape, num_hidden_layers=config.model.num_layers)
    if config.model.vocab_size:
        shape = dataclasses.replace(shape, vocab_size=config.model.vocab_size + 17)  # + special tokens
    cls = LlamaForSequenceClassification if config.model.task == "classify" else LlamaForCausalLM
    if config.model.task == "classify":
        shape = dataclasses.replace(shape, num_labels=config.model.num_labels)
    model = build_model(cls, shape, spec, abstract=True)
    linear = build_model(cls, shape, None, abstract=True)
    ids = jax.ShapeDtypeStruct((2, config.data.seq_len), jnp.int32)
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, ids)
    expected = (2, config.model.num_labels) if config.model.task == "classify" else (2, config.data.seq_len,
                                                                                      shape.vocab_size)
    assert out.shape == expected
    if spec.param_match == "width" and spec.targets:
        assert abs(count_params(model) / count_params(linear) - 1) <= 0.01
    if config.train.trainable:  # the regex names parameters this model really has
        from kanjax.training.step import check_trainable

        assert 0 < check_trainable(nnx.state(model, nnx.Param), config.train.trainable) < count_params(model)
    if config.model.reinit:
        from kanjax.training.step import trainable_mask

        assert any(jax.tree.leaves(trainable_mask(nnx.state(linear, nnx.Param), config.model.reinit)))


def test_apply_overrides_rejects_unknown_keys_by_name():
    from configs import base

    config = config_lib.apply_overrides(base.get_config(), {"train.steps": 7, "kan.targets": ("mlp",)})
    assert config.train.steps == 7 and config.kan.targets == ("mlp",)
    with pytest.raises(config_lib.ConfigError, match="unknown config key train.stepz; did you mean train.steps"):
        config_lib.apply_overrides(base.get_config(), {"train.stepz": 7})
    with pytest.raises(config_lib.ConfigError, match="unknown config key trian.steps; did you mean train.steps"):
        config_lib.apply_overrides(base.get_config(), {"trian.steps": 7})
    with pytest.raises(config_lib.ConfigError, match="unknown config key zzz; the keys are listed in configs/base.py"):
        config_lib.apply_overrides(base.get_config(), {"zzz": 7})
    with pytest.raises(config_lib.ConfigError, match="config key train.steps"):
        config_lib.apply_overrides(base.get_config(), {"train.steps": "many"})
