"""KAN MLPs without SiLU: the gated MLP computes down(gate(x) * up(x))."""

from configs.kan_cheb2 import get_config as _cheb2


def get_config():
    c = _cheb2()
    c.workdir = "runs/kan_cheb2_nosilu"
    c.kan.mlp_activation = "none"
    return c
