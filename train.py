"""Train a (KAN-)SmolLM2: python train.py --config configs/kan_cheb2.py [--config.train.steps=100 ...]

Every config field can be overridden with --config.<key>=<value>; the keys, their defaults and
what each does are in configs/base.py (the other config files start from it). A key that is not in
the config, a bad value, a data file that cannot be used or a missing path stops the run before it
trains, with one line naming the problem and exit code 2 (--verbose shows the traceback).

Exit codes: 0 done; 2 bad input (a config key or value, a file, a workdir another run is using, a
checkpoint that cannot be written); 3 training diverged (a non-finite loss; nothing after it was
saved); 130 / 143 stopped by SIGINT (Ctrl-C) / SIGTERM: the step in flight is finished and saved,
and the same command resumes (a second signal exits at once, without saving).
"""

import importlib.util
import logging
import os
import sys

# transformers' advice that PyTorch is absent (kanjax needs none) is noise on every run.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from absl import app, flags
from ml_collections import config_flags

DEFAULT_CONFIG = "configs/kan_cheb2.py"
_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Run configuration file.", lock_config=True)
_STOP_AFTER = flags.DEFINE_integer("stop_after", None, "Stop (with a checkpoint) after this many steps; "
                                   "a later run resumes. The schedule still follows train.steps.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of an input error (and the "
                             "libraries' own error logs).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "absl.logging"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not _VERBOSE.value:
        # Orbax logs every failed background write and tensorstore's asyncio every cancelled read
        # with a traceback (hundreds on a full disk or a truncated checkpoint); the run reports
        # each such failure itself in one line.
        for noisy in ("absl", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        from kanjax.training.checkpoint import drop_async_leftovers

        drop_async_leftovers()  # the same failures' abandoned tensorstore callbacks ("Event loop is closed")
    from kanjax.errors import InputError
    from kanjax.training.divergence import Diverged
    from kanjax.training.loop import run
    from kanjax.training.signals import Interrupted

    try:
        run(_CONFIG.value, max_steps=_STOP_AFTER.value)
    except (InputError, FileNotFoundError, ConnectionError) as e:
        if _VERBOSE.value:
            raise
        sys.exit(f"train.py: {e}")  # one line, exit code 1 from sys.exit(str): made 2 below
    except (Diverged, Interrupted) as e:
        print(f"train.py: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    return 0


def print_help() -> None:
    """--help: what the script does, its own flags, and where the config keys are (exit code 0)."""
    print(__doc__)
    print(flags.FLAGS.main_module_help())
    print("\nConfig keys: every key of configs/base.py, e.g. --config.train.steps=100 --config.data.batch_size=16 "
          "--config.workdir=runs/mine")


def unknown_config_keys(argv: list[str]) -> str | None:
    """The first --config.<key> the config file does not have, as a one-line message naming the
    nearest valid key (ml_collections would raise it from inside flag parsing, as a traceback)."""
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not keys:
        return None
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    spec = importlib.util.spec_from_file_location("_run_config", path or DEFAULT_CONFIG)
    if spec is None or spec.loader is None:
        return None  # absl reports a bad --config path itself
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    from kanjax.training import config as config_lib

    for key in keys:
        if key not in config_lib.flat_keys(config) and not key.startswith(("kan.basis_params.", "mesh.shape.")):
            return f"train.py: {config_lib.unknown_key_error(key, config)}"
    return None


if __name__ == "__main__":
    if {"--help", "-h", "-?", "--helpshort"} & set(sys.argv[1:]):
        print_help()
        sys.exit(0)
    problem = unknown_config_keys(sys.argv)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    try:
        app.run(main)
    except SystemExit as e:  # input errors exit with 2, like argument errors
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
    except KeyboardInterrupt:  # Ctrl-C before the run installed its own handling (imports, flags)
        print("train.py: interrupted before the run began; nothing was written", file=sys.stderr)
        sys.exit(130)
