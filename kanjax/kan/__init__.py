"""KAN layers: the basis families as pure functions (`BASES`, `expand`) and `KANLinear`, one layer
over all of them (basis expansion, then one matmul). Knows nothing of Llama.

Modules: `basis_terms` (numpy definitions, shipped with exported models), `basis` (JAX evaluation),
`layer` (KANLinear, parameter counting and matching), `matmul` (the contraction's precision),
`viz` (plots of learned edge functions; imports matplotlib, so import it yourself).
"""

from kanjax.kan.basis import expand
from kanjax.kan.basis_terms import BASES
from kanjax.kan.layer import KANLinear, count_params, matched_width

__all__ = ["BASES", "expand", "KANLinear", "count_params", "matched_width"]
