"""Orbax checkpoints of the whole training state: model, optimiser, step, RNG, loss scale, the
data iterator's position and the config, so a restart continues exactly where training stopped.

Orbax writes each step into a temporary folder and renames it only once complete, so a save
killed half-way is never listed as a checkpoint; `restore_latest` also falls back to the previous
step (with a warning) when the newest one cannot be read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save every `every` steps, keep the last `keep`, optionally asynchronously."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config"))

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_state: Optional[dict], config: dict) -> None:
        """Start saving `step` (returns before the write ends when asynchronous)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(config)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"] or {}), dict(restored["config"] or {})

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict, dict]]:
        """(step, state, data_state, config) of the newest readable checkpoint, or None."""
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as err:  # noqa: BLE001 - any unreadable step: fall back, loudly
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one",
                            step, self.directory, type(err).__name__, err)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
