"""Evaluation: continuation log-likelihoods (multiple choice, perplexity), BIG-Bench Hard, the
task registry, the runner behind eval.py and the lm-evaluation-harness adapter. Never imports the
training loop.

Modules: `loglik` (scoring), `packing` (shared-prefix rows), `tasks` (loaders and registry), `bbh`,
`runner` (model loading and the task runner), `lm_eval_adapter`.
Names load on first use.
"""

import importlib

_EXPORTS = {"load_model": "runner", "run": "runner", "TASKS": "tasks"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
