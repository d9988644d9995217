"""The public surface: the names a user starts from, each subpackage's `__init__`, and the import
paths of the flat layout that README, notebooks and earlier releases showed."""

import importlib
import subprocess
import sys

import pytest

import kanjax

SHOWN = [  # (import path a user was shown, name)
    ("kanjax.kan", "KANLinear"), ("kanjax.kan", "matched_width"), ("kanjax.kan", "count_params"),
    ("kanjax.basis", "BASES"), ("kanjax.basis", "expand"), ("kanjax.kanify", "KANSpec"), ("kanjax.kanify", "kanify"),
    ("kanjax.kanify", "param_report"), ("kanjax.kan_spec", "KANSpec"), ("kanjax.llama", "LlamaConfig"),
    ("kanjax.llama", "LlamaForCausalLM"), ("kanjax.llama", "LlamaForSequenceClassification"),
    ("kanjax.llama", "truncate_layers"), ("kanjax.llama", "trim_vocab"), ("kanjax.surgery", "truncate_layers"),
    ("kanjax.surgery", "param_arrays"), ("kanjax.hf", "load_pretrained"), ("kanjax.hf", "save_pretrained"),
    ("kanjax.hf", "load_gguf"), ("kanjax.hf", "smollm2_gguf_path"), ("kanjax.generate", "generate"),
    ("kanjax.generate", "chat_prompt"), ("kanjax.data", "load_tokenizer"), ("kanjax.config", "apply_overrides"),
    ("kanjax.config", "InputError"), ("kanjax.train_loop", "run"), ("kanjax.eval_models", "load_model"),
    ("kanjax.eval_models", "load_workdir"),
]


def test_import_kanjax_is_light_and_its_names_load_on_first_use():
    code = "import sys, kanjax; print('jax' in sys.modules, sorted(kanjax.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False"), out
    for name in kanjax.__all__:
        obj = getattr(kanjax, name)
        assert obj is getattr(importlib.import_module(kanjax._EXPORTS[name]), name)
    assert {"KANLinear", "KANSpec", "kanify", "LlamaConfig", "LlamaForCausalLM", "LlamaForSequenceClassification",
            "load_pretrained", "save_pretrained", "load_gguf"} <= set(kanjax.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kanjax.nope


@pytest.mark.parametrize("path,name", SHOWN)
def test_every_import_users_were_shown_still_works(path, name):
    assert getattr(importlib.import_module(path), name) is not None


@pytest.mark.parametrize("old", sorted(kanjax._MOVED))
def test_a_flat_layout_module_path_is_the_module_at_its_new_path(old):
    new = importlib.import_module(f"kanjax.{kanjax._MOVED[old]}")
    assert importlib.import_module(f"kanjax.{old}") is new
    if old not in kanjax._EXPORTS:  # `from kanjax import train_loop`; `kanjax.kanify` is the function
        assert getattr(kanjax, old) is new


def test_subpackage_surfaces_name_what_they_export():
    for pkg in ("kan", "llama", "hf", "data", "training", "evals"):
        mod = importlib.import_module(f"kanjax.{pkg}")
        assert mod.__doc__ and mod.__all__, pkg
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (pkg, name)


def test_importing_the_old_kanify_module_keeps_the_exported_function():
    from kanjax.kanify import KANSpec  # imports the module kanjax.kanify
    from kanjax.llama.kanify import kanify

    assert kanjax.kanify is kanify and callable(kanjax.kanify) and KANSpec is kanjax.KANSpec


def test_the_old_module_path_of_a_command_still_runs():
    """README showed `python -m kanjax.tfds_source prepare ...`: it runs the module at its new path."""
    out = subprocess.run([sys.executable, "-m", "kanjax.tfds_source", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "prepare" in out.stdout, out.stderr[-2000:]
