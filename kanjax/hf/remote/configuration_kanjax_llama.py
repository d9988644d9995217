"""Configuration of a KAN-ified Llama exported by kanjax (transformers remote code).

A `LlamaConfig` plus the fields kanjax writes for KAN-ified models:

  kan:                the full KANSpec as a dict (targets: the projection kinds, strategy, basis,
                      degree, domain, center, base, den_degree, basis_params, ...)
  kan_layers:         the indices of the blocks with KAN projections
  kan_ranks:          {kind: r} bottleneck rank of parameter-matched attention projections
  intermediate_sizes: per-layer MLP widths (parameter-matched MLPs), or None
  mlp_activations:    per-layer "silu" / "none", or None (all SiLU)

This file is copied verbatim into every export; it must not import kanjax.
"""

from transformers import LlamaConfig


class KanjaxLlamaConfig(LlamaConfig):
    model_type = "kanjax_llama"
    # Llama's tensor-parallel plan names nn.Linear projections; KAN projections are not linear.
    base_model_tp_plan = None

    kan: dict | None = None
    kan_layers: list[int] | None = None
    kan_ranks: dict | None = None
    intermediate_sizes: list[int] | None = None
    mlp_activations: list[str] | None = None
