"""benchmarks/perf/kan_layer.py's study part: which layers it times, what each is compared with, and the
median's distribution-free interval (the figures claims 1 and 2 of agnews.md rest on)."""


import numpy as np
from scipy import stats

from benchmarks.perf import kan_layer
from benchmarks.studies.agnews import plan as agnews_plan


def test_study_layers_are_the_basis_and_degree_arms_and_each_has_its_same_degree_reference():
    layers = kan_layer.study_layers(576, 1536)
    assert set(layers) == {name[4:] for name in agnews_plan.BASIS_DEGREE_ARMS} | {"chebyshev2"}
    refs = {name: kan_layer.same_degree_reference(name, kw, layers) for name, (kw, _) in layers.items()}
    assert refs["jacobi_deg3"] == refs["gegenbauer_deg3"] == refs["legendre_deg3"] == "chebyshev2_deg3"
    assert refs["fibonacci_deg4"] == "chebyshev2_deg3"  # F_4 is a cubic
    assert refs["rational"] is refs["bspline"] is refs["chebyshev2_deg3"] is refs["chebyshev2"] is None
    widths = {name: w for name, (_, w) in layers.items()}
    assert widths["chebyshev2"] > widths["chebyshev2_deg3"] > widths["chebyshev2_deg5"]  # parameter-matched


def test_median_interval_covers_the_median_at_the_stated_level():
    """lo, hi are order statistics x_(l), x_(n+1-l) with P(Bin(n, 1/2) < l) <= 2.5%, the largest such l;
    checked on the binomial directly, and by coverage of a known median over many samples."""
    for n in (6, 12, 30):
        x = list(range(n))
        _, lo, hi = kan_layer.median_interval(x)
        low = lo + 1
        assert stats.binom.cdf(low - 1, n, 0.5) <= 0.025 < stats.binom.cdf(low, n, 0.5)
        assert hi == n - low
    rng = np.random.default_rng(0)
    hits = [lo <= 0 <= hi for lo, hi in (kan_layer.median_interval(list(rng.standard_normal(30)))[1:]
                                          for _ in range(2000))]
    assert 0.94 <= np.mean(hits) <= 0.99
