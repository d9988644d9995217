"""Orbax checkpoints of a training run: what resumes it, and what rebuilds its model.

Each step folder holds four items:
    state   the train state (params, optimiser, step, loss scale): exact resume
    data    the data iterator's position: exact resume
    config  the run's config as JSON (what a resume is checked against)
    model   the model record: its config.json dict (`kanjax.hf.model_config_dict`: Llama fields, KAN
            spec, ranks, trimmed-vocabulary ids) and task, so evaluation, generation and export
            rebuild the model from the checkpoint alone (`kanjax.training.workdir.load_workdir`)

Orbax writes each step into a temporary folder and renames it only once complete, so a save
killed half-way is never listed as a checkpoint. A step that is listed but cannot be read (a disk
fault, a truncated file) is moved aside into `<workdir>/checkpoints_unreadable/` (kept, reported in
one line) and the run resumes from the step before it, so its later saves do not collide with it.

A save that fails (a full disk, a quota, a file-size limit) raises `CheckpointSaveError` in one line
naming the step, the reason and the last complete checkpoint, which it never touches: at the save
itself when synchronous, else at the first step after the background write fails (`poll`).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from kanjax.errors import InputError

log = logging.getLogger(__name__)
ITEMS = ("state", "data", "config", "model")


class CheckpointSaveError(InputError):
    """A checkpoint could not be written (an environment problem the user fixes, like bad input:
    one line, exit code 2); the checkpoints already complete are kept."""


def _reason(err: BaseException) -> str:
    """The operating system's words from a tensorstore / Orbax error ("No space left on device")."""
    text = str(err)
    found = re.search(r"(Failed to write [^\[]*?: )?([A-Z][^\[\]:]*?) \[os_error_code", text)
    if found:
        return found.group(2)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return (text.strip().splitlines() or [type(err).__name__])[0][:200]


class Checkpointer:
    """Save every `every` steps, keep the last `keep`, optionally asynchronously."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.in_flight: int | None = None  # the step whose (asynchronous) save has not been confirmed
        self.closed = False

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_state: dict | None, config: dict, model: dict) -> None:
        """Start saving `step` (returns before the write ends when asynchronous)."""
        with self._reporting(step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
                config=ocp.args.JsonSave(config),
                model=ocp.args.JsonSave(model)), force=True)
        self.in_flight = step

    def _reporting(self, step: int | None):
        """Context turning a failed write (of `step`, or of the save in flight) into CheckpointSaveError."""
        @contextlib.contextmanager
        def ctx():
            try:
                yield
            except Exception as err:  # noqa: BLE001 - tensorstore / Orbax raise ValueError, OSError, ...
                failed = self.in_flight if self.in_flight is not None else step
                self.in_flight = None
                done = [s for s in finished_steps(self.directory) if s != failed]
                last = f"the last complete one, step {done[-1]}, is kept" if done else "no earlier checkpoint exists"
                raise CheckpointSaveError(f"checkpoint step {failed} could not be written to {self.directory} "
                                          f"({_reason(err)}); {last}. Free space or use another "
                                          "--config.workdir, then rerun to resume") from err
        return ctx()

    def poll(self) -> None:
        """Raise CheckpointSaveError once an asynchronous save has failed (cheap: call every step)."""
        if self.in_flight is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"] or {}), dict(restored["config"] or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, config) of the newest readable checkpoint, or None. Unreadable
        newer steps are moved aside (`move_aside`)."""
        with quiet_abandoned_reads():
            for step in reversed(self.steps()):
                try:
                    return (step, *self.restore(step, abstract_state))
                except Exception as err:  # noqa: BLE001 - any unreadable step: set it aside, fall back
                    self.move_aside(step, err.with_traceback(None))  # frees the failed read's frames
        return None

    def move_aside(self, step: int, err: BaseException) -> Path:
        """Move an unreadable step folder out of the checkpoint list, keeping its files."""
        dest = self.directory.parent / f"{self.directory.name}_unreadable" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(dest))
        self.manager.reload()
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        print(f"checkpoint step {step} is unreadable ({type(err).__name__}: {first}); moved to {dest}, "
              "resuming from the one before it", flush=True)
        return dest

    def wait(self) -> None:
        with self._reporting(None):
            self.manager.wait_until_finished()
        self.in_flight = None

    def close(self) -> None:
        """Wait for the save in flight, then release Orbax's threads; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            self.wait()
        finally:
            self.manager.close()


# ----------------------------------------------------------------------------- reading a run back


def finished_steps(directory: str | Path) -> list[int]:
    """Steps with a complete checkpoint in `directory` (Orbax renames a step's folder into place
    only when its save has finished)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def newest_config(directory: str | Path) -> dict | None:
    """The config JSON of the newest step whose config item reads; None without checkpoints. Reads
    only: a run checks it against its own config before it creates or writes anything."""
    for step in reversed(finished_steps(directory)):
        try:
            return dict(ocp.JsonCheckpointHandler().restore(Path(directory).absolute() / str(step) / "config"))
        except Exception:  # noqa: BLE001 - restore_latest reports and moves unreadable steps
            continue
    return None


def read_model_record(directory: str | Path, step: int) -> dict:
    """The `model` item of checkpoint `step`: {"config": config.json dict, "task": ...}."""
    path = Path(directory) / str(step) / "model"
    if not path.exists():
        raise FileNotFoundError(f"{path.parent} holds no model record (a checkpoint written before kanjax "
                                "stored one): rebuild its model from the run's config instead")
    return dict(ocp.JsonCheckpointHandler().restore(path))


class UnreadableCheckpointError(InputError):
    """A listed checkpoint whose files cannot be read (truncated, a disk fault); names the step."""


def _async_leftover(unraisable) -> bool:
    """A tensorstore coroutine a failed Orbax read or write abandoned, or its callback arriving after
    Orbax's event loop closed ("RuntimeError: Event loop is closed"): noise once the failure that
    caused it is reported."""
    return inspect.iscoroutine(unraisable.object) or (
        isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value))


def drop_async_leftovers() -> None:
    """Process-wide (train.py and eval.py without --verbose): Python's unraisable-exception hook
    ignores `_async_leftover`s, which a failed save or read prints by the hundred otherwise."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _async_leftover(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook


@contextlib.contextmanager
def quiet_abandoned_reads():
    """A failed Orbax read leaves tensorstore coroutines behind, and Python prints one traceback per
    coroutine when it collects them ("Exception ignored in: <coroutine ...>": hundreds for a real
    model). Inside this context they are collected and dropped; the failure is reported once."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _async_leftover(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def read_params(directory: str | Path, step: int) -> dict:
    """The params of checkpoint `step` as nested dicts of numpy arrays, whatever the topology that
    saved them (no restore target needed). Unreadable files: UnreadableCheckpointError, one line."""
    import jax

    path = (Path(directory) / str(step) / "state").absolute()
    # The item's handler, not a Checkpointer: the step-level _CHECKPOINT_METADATA of a composite
    # checkpoint is not inside the item folder, and a Checkpointer warns that it is missing.
    handler = ocp.PyTreeCheckpointHandler()
    with quiet_abandoned_reads():
        try:
            meta = handler.metadata(path)
            meta = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
            return _strip_value(handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))["params"])
        except Exception as err:  # noqa: BLE001 - tensorstore raises bare Exception
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            problem = f"checkpoint step {step} in {directory} cannot be read ({first}); a truncated or damaged file?"
    raise UnreadableCheckpointError(problem)  # outside the except: the failed read is already collected


def _strip_value(tree):
    """nnx.State saved by Orbax keeps each Variable as {"value": array}: unwrap to a pure dict."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: _strip_value(v) for k, v in tree.items()}
    return tree
