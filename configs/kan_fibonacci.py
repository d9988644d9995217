"""AGNews study: every linear layer of the mini model replaced by a parameter-matched fibonacci KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_fibonacci"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "fibonacci"
    # F_0 = 0 drops out, so degree 2 would be {1, x}: Chebyshev-2 of degree 1. Degree 3 keeps three
    # columns {1, x, x² + 1}, as many as the other degree-2 families.
    c.kan.degree = 3
    return c
