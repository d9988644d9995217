"""What a rerun in a workdir that already holds checkpoints may do, checked before anything loads.

    check_steps(workdir, saved_step, steps)   fewer train.steps than the run has already taken:
                                              refused in one line (it would report a step count
                                              it did not evaluate); more steps continue the run
    recorded_vocab(folder, saved, current)    the trimmed vocabulary the checkpoints were trained
                                              with, which the resumed run keeps whatever data.path
                                              now says (or a refusal naming the keys, for
                                              checkpoints that do not record it)
"""

from __future__ import annotations

from pathlib import Path

from kanjax.training import checkpoint
from kanjax.training.config import ConfigError, json_value

# Keys a resume may change (train_loop._FREE_TO_CHANGE) that decide which tokens the trimmed
# vocabulary keeps: with no recorded vocabulary they must stay as they were.
_VOCAB_SOURCES = ("data.path", "data.name", "data.tokenizer", "data.revision")


def check_steps(workdir: Path, saved_step: int, steps: int) -> None:
    """A run asked for fewer steps than its workdir's checkpoints hold is refused, naming both."""
    if saved_step > steps:
        raise ConfigError(f"{workdir} holds a run already at step {saved_step}, past train.steps={steps}; "
                          f"give train.steps >= {saved_step} to continue it (a longer schedule), or another "
                          "workdir for a new run")


def recorded_vocab(folder: Path, saved: dict, current: dict) -> dict | None:
    """The `kanjax_vocab` record of the newest checkpoint in `folder` that has a model record; None
    when the run does not trim its vocabulary. Checkpoints without a record (written before kanjax
    stored one) fall back to trimming afresh, allowed only when every key that decides the
    vocabulary is unchanged (`saved`, `current`: the checkpoint's and this run's config JSON)."""
    if not json_value(current, "model.vocab_size"):
        return None
    for step in reversed(checkpoint.finished_steps(folder)):
        try:
            vocab = checkpoint.read_model_record(folder, step)["config"].get("kanjax_vocab")
        except Exception:  # noqa: BLE001 - an unreadable step is reported by restore_latest
            continue
        if vocab:
            return vocab
    changed = [k for k in _VOCAB_SOURCES if json_value(saved, k) != json_value(current, k)]
    if changed:
        shown = "; ".join(f"{k}: {json_value(saved, k)!r} → {json_value(current, k)!r}" for k in changed)
        raise ConfigError(f"{folder.parent}: its checkpoints do not record their trimmed vocabulary "
                          f"(model.vocab_size={json_value(current, 'model.vocab_size')}), which was taken from the "
                          f"training data; resume with the data it was trimmed from ({shown})")
    return None


__all__ = ["check_steps", "recorded_vocab"]
