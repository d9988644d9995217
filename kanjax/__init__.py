"""kanjax: Kolmogorov-Arnold Network layers in JAX/Flax NNX, inside SmolLM2.

The names a user starts from are here; each subpackage's `__init__` is the public surface of one
concern (arrows point down: training and evals use hf and data, which use llama, which uses kan):

    kanjax.kan        bases and KANLinear              kanjax.llama     the model, surgery, kanify, generation
    kanjax.hf         Hugging Face / GGUF in and out   kanjax.data      sources -> token arrays -> batches
    kanjax.training   config, step, loop, checkpoints  kanjax.evals     log-likelihoods, tasks, BBH, runner

Names load on first use (`import kanjax` imports no JAX). Module paths of the flat layout before
0.2 (`kanjax.kanify`, `kanjax.train_loop`, `kanjax.basis`, ...) keep working: `_MOVED` maps each
to its module now, so an import a user was shown does not break.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "KANLinear": "kanjax.kan.layer", "KANSpec": "kanjax.llama.kan_spec", "kanify": "kanjax.llama.kanify",
    "LlamaConfig": "kanjax.llama.model", "LlamaForCausalLM": "kanjax.llama.model",
    "LlamaForSequenceClassification": "kanjax.llama.model", "load_pretrained": "kanjax.hf.pretrained",
    "save_pretrained": "kanjax.hf.pretrained", "load_gguf": "kanjax.hf.pretrained",
}
__all__ = list(_EXPORTS)

_MOVED = {
    "basis": "kan.basis", "basis_terms": "kan.basis_terms", "matmul": "kan.matmul", "viz": "kan.viz",
    "attention": "llama.attention", "surgery": "llama.surgery", "generate": "llama.generate",
    "kan_spec": "llama.kan_spec", "kanify": "llama.kanify",
    "hf_names": "hf.names", "hf_gguf": "hf.gguf", "hf_folder": "hf.folder", "hf_kan": "hf.kan_export",
    "data_arrays": "data.arrays", "data_sources": "data.sources", "tfds_source": "data.tfds",
    "config": "training.config", "train_lib": "training.step", "train_loop": "training.loop",
    "checkpoint": "training.checkpoint", "sharding": "training.sharding", "metrics": "training.metrics",
    "diagnostics": "training.diagnostics",
    "evaluate": "evals.loglik", "packing": "evals.packing", "eval_tasks": "evals.tasks", "bbh": "evals.bbh",
    "eval_models": "evals.runner", "lm_eval_adapter": "evals.lm_eval_adapter",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MOVED:  # `from kanjax import train_loop` of the flat layout
        return importlib.import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import kanjax.<old>` gives the module at its new path (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == __name__ and old in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # The import system returns whatever sys.modules holds under the name after exec_module.
        new = importlib.import_module(f"{__name__}.{_MOVED[module.__name__.partition('.')[2]]}")
        sys.modules[module.__name__] = new

    def get_code(self, fullname):  # `python -m kanjax.tfds_source ...` runs the moved module
        new = f"{__name__}.{_MOVED[fullname.partition('.')[2]]}"
        return importlib.util.find_spec(new).loader.get_code(new)


class _Package(types.ModuleType):
    """`kanjax.kanify` names both the exported function and an old module path: importing the module
    (`from kanjax.kanify import KANSpec`) must not rebind the package's `kanify` to it."""

    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
sys.meta_path.append(_MovedModule())
