"""AGNews study: every linear layer of the mini model replaced by a parameter-matched group-rational
KAN (KAT's GR-KAN: 8 channel groups, each with one rational P/Q of degree (5, 4), then a linear map)."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_group_rational"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "group_rational"
    c.kan.degree, c.kan.den_degree, c.kan.num_groups = 5, 4, 8  # KAT's orders and groups
    c.kan.domain = "none"  # KAT applies the rational to the raw input (Q >= 1: no pole to avoid)
    return c
