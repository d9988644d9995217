"""AGNews study: every linear layer of the mini model replaced by a parameter-matched gegenbauer KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_gegenbauer"
    c.kan.targets = ("all",)
    c.kan.basis = "gegenbauer"
    return c
