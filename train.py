"""Train a (KAN-)SmolLM2: python train.py --config configs/kan_cheb2.py [--config.train.steps=100 ...]

Every config field can be overridden with --config.<key>=<value>; an unknown key or a value of
the wrong type stops the run with an error naming the key, before anything is loaded.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/kan_cheb2.py", "Run configuration file.",
                                          lock_config=True)
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Stop (with a checkpoint) after this many steps; "
                                   "a later run resumes. The schedule still follows train.steps.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "absl.logging"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from kanjax.train_loop import run

    run(_CONFIG.value, max_steps=_STOP_AFTER.value)


if __name__ == "__main__":
    app.run(main)
