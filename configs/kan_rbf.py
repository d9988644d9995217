"""AGNews study: every linear layer of the mini model replaced by a parameter-matched rbf KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_rbf"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "rbf"
    c.kan.basis_params.num_centers = 8
    return c
