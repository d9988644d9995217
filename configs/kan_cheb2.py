"""The study's best speed/accuracy trade-off: Chebyshev 2nd kind, degree 2, in place of every
linear layer of the mini model, parameter-matched to the linear baseline."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_cheb2"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "chebyshev2"
    c.kan.degree = 2
    return c
