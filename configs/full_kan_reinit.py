"""Full-model study, arm (c): the MLPs of the last 5 blocks replaced by randomly initialised
Chebyshev-2 KAN layers, parameter-matched to the linear MLPs (narrower hidden width), then trained
on chat data: the original study's KAN arm."""

from configs.full_last5_mlp import get_config as _arm_d


def get_config():
    c = _arm_d()
    c.workdir = "runs/full_kan_reinit"
    c.kan.init = "random"
    c.kan.domain = "tanh"
    c.kan.param_match = "width"
    return c
