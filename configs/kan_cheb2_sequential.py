"""KAN after the linear layer: KAN(linear(x)), parameter-matched (narrower layers)."""

from configs.kan_cheb2 import get_config as _cheb2


def get_config():
    c = _cheb2()
    c.workdir = "runs/kan_cheb2_sequential"
    c.kan.strategy = "sequential"
    return c
