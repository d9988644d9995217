"""Round-robin timing shared by the benchmark scripts: one run of each function per round, so load
from other processes on a shared machine hits every contender alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def round_robin(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """{name: [seconds of each round]} after `warmup` untimed runs of each function."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
