"""AGNews study: every linear layer of the mini model replaced by a parameter-matched bspline KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_bspline"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "bspline"
    c.kan.basis_params.grid = 5
    c.kan.basis_params.order = 3
    return c
