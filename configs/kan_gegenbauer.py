"""AGNews study: every linear layer of the mini model replaced by a parameter-matched gegenbauer KAN."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/kan_gegenbauer"
    c.kan.targets = ("all",)
    c.kan.param_match = "width"  # the study compares at equal parameters
    c.kan.basis = "gegenbauer"
    # λ = 3: λ = 3/2 is Jacobi(1, 1) after the per-column normalisation, λ = 1 Chebyshev-2 and
    # λ = 1/2 Legendre; centred at degree 3 a symmetric family's cubic column is x³ − 3x/(2(λ + 2))
    # up to scale, which for λ = 2 is Hermite's on its interval. Any of those would repeat an arm.
    c.kan.basis_params.alpha = 3.0
    return c
