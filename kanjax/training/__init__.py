"""Training: the run config's checks, the sharded jitted step, the loop behind train.py, Orbax
checkpoints and the workdir's model record, metrics and per-projection diagnostics.

Modules: `config` (overrides, validation), `sharding` (mesh, logical-axis rules), `step` (optimiser,
dtype policy, loss scaling, the steps), `build` (config -> model), `workdir` (the model record a
checkpoint carries; workdir -> model), `checkpoint`, `metrics`, `diagnostics`, `loop` (setup, train,
finish, run).
Names load on first use, so importing a module here does not import the loop.
"""

import importlib

_EXPORTS = {"run": "loop", "apply_overrides": "config", "validate": "config", "Checkpointer": "checkpoint",
            "model_from_config": "build", "load_workdir": "workdir"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
