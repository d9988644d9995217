"""The error every "bad input" derives from: the one class train.py and eval.py turn into one line."""


class InputError(ValueError):
    """Bad input from the user (a config value, a data file, a path): train.py and eval.py print its
    one-line message and exit with code 2, no traceback (unless --verbose)."""
