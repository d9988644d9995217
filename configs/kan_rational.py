"""AGNews study: every linear layer of the mini model replaced by a parameter-matched rational KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_rational"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "rational"
    c.kan.degree = 3  # numerator degree of P/Q
    return c
