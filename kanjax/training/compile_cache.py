"""JAX's persistent compilation cache as a run option (config key `compile_cache`).

A fresh train.py compiles many small programs while it builds and initialises the model (one per
eager op and shape) and then the train step; with the cache on, every later process with the same
programs (same HLO, devices, jax and XLA versions: JAX's cache key) reads them from disk instead
(benchmarks/results/perf/startup.md measures what that saves).
"""

from __future__ import annotations

import os

import jax


def enable(directory: str) -> bool:
    """Cache every compiled program under `directory` (created if absent), however short its
    compilation; "" leaves JAX's settings alone. Call before the process's first compilation (JAX
    sets its cache up then). Returns whether the cache was turned on."""
    if not directory:
        return False
    path = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


__all__ = ["enable"]
