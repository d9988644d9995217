"""KANSpec: which projections of a Llama model become KAN layers, and how (the config's `kan` section).

Pure data with its validation: it knows the basis registry (to check a basis and its keywords) and
nothing of the model. `kanjax.llama.kanify` applies it; `kanjax.llama.KANSpec` and `kanjax.KANSpec` are its public names.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from kanjax.kan import basis as basis_lib
from kanjax.kan.layer import CENTERS, COEF_INITS

ATTN_KINDS = ("q", "k", "v", "o")
MLP_KINDS = ("gate", "up", "down")
GROUPS = {"attn": ATTN_KINDS, "mlp": MLP_KINDS, "all": ATTN_KINDS + MLP_KINDS}
STRATEGIES = ("replace", "parallel", "sequential", "activation")
ACTIVATION_INITS = ("silu_fit", "silu_residual")


@dataclasses.dataclass(frozen=True)
class KANSpec:
    """Which projections become KAN layers, and how. Empty `targets` = the linear model.

    targets: kinds among q, k, v, o, gate, up, down, or the groups attn, mlp, all.
    layers: "all", "last:N", or a sequence of block indices.
    strategy: replace | parallel | sequential | activation. "activation" is KAT's warm start: the
      projection stays linear (the pretrained kernel) and is followed by a learnable
      group-rational activation (`kanjax.kan.group_rational.GroupRational`, every group starting as
      the least-squares fit of SiLU on `SILU_FIT_RANGE`), which replaces the block's SiLU; it needs
      basis="group_rational", targets=["gate"] and mlp_activation="none" (the MLP becomes
      down(φ(gate(x)) ⊙ up(x))); degree / den_degree / num_groups size the rational (the warm
      start uses `SILU_DEGREES` = (9, 8): at the default degree 2 the fit of SiLU is poor).
    activation_init: strategy "activation" only: "silu_fit" (default: φ_g = P_g/Q_g, the fit
      above; SmolLM2's logits move by ~4e-2) or "silu_residual" (φ_g = SiLU + P_g/Q_g with P_g = 0:
      SiLU exactly at step 0, logits within float32 rounding (4e-5 on SmolLM2), the same parameter
      count). Exports without the key load as "silu_fit".
    basis, degree, domain, base, den_degree, basis_params: KANLinear's arguments
      (basis_params: other basis keywords such as grid, order, alpha, beta).
    num_groups: group_rational only: the number of channel groups, each with its own rational.
    input_scale: KANLinear's learned per-input-channel scale before the domain map (init 1;
      `kanjax.kan.range_refit` fits it to a batch of activations).
    mlp_activation: "silu" or "none" (GLU without SiLU) for the blocks whose MLP is KAN-ified.
    param_match: "none" or "width" (see the module docstring).
    param_ratio: with param_match="width", the share of the linear block's parameters to match
      (0.5: a KAN at about half the linear parameter count).
    init: "random" or "from_linear" (KAN layers start as the linear map they replace; exact
      with domain="none" and a polynomial basis; a parallel branch starts at zero).
    recompute: KANLinear's `recompute` (the basis recomputed in the backward pass, in row chunks):
      memory and time only, the function and its gradients are the same either way. Off here (the
      layer's own default is on): in a whole model's step the expansion is a small share of the
      peak, and recomputing it costs step time (benchmarks/results/perf/train_step.md); turn it on
      where activations cap batch or sequence length.
    """

    targets: tuple[str, ...] = ()
    layers: Any = "all"
    strategy: str = "replace"
    basis: str = "chebyshev2"
    degree: int = 2
    domain: str = "tanh"
    base: str = ""
    den_degree: int = 2
    basis_params: tuple[tuple[str, Any], ...] = ()
    mlp_activation: str = "silu"
    param_match: str = "none"
    param_ratio: float = 1.0
    init: str = "random"
    coef_init: str = "linear"
    center: str = "zero"
    bottleneck_init: str = "output"
    num_groups: int = 8
    input_scale: bool = False
    activation_init: str = "silu_fit"
    recompute: bool = False

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("base", self.base or "")  # "" and None: no residual branch
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        kinds = []
        for t in targets:
            if t not in GROUPS and t not in GROUPS["all"]:
                raise ValueError(f"kan.targets: unknown target {t!r}; use {GROUPS['all']} or {tuple(GROUPS)}")
            kinds += [k for k in GROUPS.get(t, (t,)) if k not in kinds]
        put("targets", tuple(k for k in GROUPS["all"] if k in kinds))
        if isinstance(self.layers, str):
            if self.layers != "all" and not (self.layers.startswith("last:") and self.layers[5:].isdigit()):
                raise ValueError(f"kan.layers: {self.layers!r} is not 'all', 'last:N' or a list of indices")
        else:
            put("layers", tuple(int(i) for i in self.layers))
        bp = self.basis_params
        put("basis_params", tuple(sorted((k, basis_lib.freeze(v))
                                         for k, v in (dict(bp) if not isinstance(bp, dict) else bp).items())))
        for key, allowed in (("strategy", STRATEGIES), ("mlp_activation", ("silu", "none")),
                             ("param_match", ("none", "width")), ("init", ("random", "from_linear")),
                             ("coef_init", COEF_INITS), ("center", CENTERS),
                             ("bottleneck_init", ("layerwise", "output")), ("activation_init", ACTIVATION_INITS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"kan.{key}: {getattr(self, key)!r} is not one of {allowed}")
        if self.targets:  # validates basis name and its keywords, naming the bad one
            basis_lib.resolve_params(self.basis, **self.kan_kwargs(include_layer_args=False))
        if not 0 < float(self.param_ratio) <= 1:
            raise ValueError(f"kan.param_ratio: {self.param_ratio!r} is not in (0, 1]")
        put("param_ratio", float(self.param_ratio))
        if isinstance(self.num_groups, bool) or not isinstance(self.num_groups, int) or self.num_groups < 1:
            raise ValueError(f"kan.num_groups: {self.num_groups!r} is not a positive integer")
        if not isinstance(self.input_scale, bool):
            raise ValueError(f"kan.input_scale: {self.input_scale!r} is not True or False")
        if self.strategy == "activation" and self.targets:
            need = dict(basis="group_rational", targets=("gate",), mlp_activation="none", base="", input_scale=False)
            bad = {k: getattr(self, k) for k, v in need.items() if getattr(self, k) != v}
            if bad:
                raise ValueError(f"kan.strategy='activation' replaces the gate's SiLU by a group rational after the "
                                 f"linear gate projection: it needs {need}; got {bad}")
        if self.activation_init != "silu_fit" and self.strategy != "activation":
            raise ValueError(f"kan.activation_init={self.activation_init!r} is for strategy='activation' only, "
                             f"got strategy={self.strategy!r}")
        if self.init == "from_linear" and self.param_match != "none":
            raise ValueError("kan.init='from_linear' keeps full widths (it reproduces the pretrained "
                             "map); it cannot be combined with kan.param_match='width'")

    @classmethod
    def from_dict(cls, d) -> KANSpec:
        """From a plain dict or ml_collections ConfigDict; unknown keys are errors naming them."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"kan: unknown key(s) {unknown}; known: {sorted(names)}")
        if "basis_params" in d and d["basis_params"] is not None:
            d["basis_params"] = dict(d["basis_params"])
        return cls(**{k: v for k, v in d.items() if v is not None or k == "base"})

    @classmethod
    def config_defaults(cls) -> dict:
        """The defaults as a config section (configs/base.py's `kan`): tuples stay tuples."""
        d = dataclasses.asdict(cls())
        d["basis_params"] = {}
        return d

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"], d["basis_params"] = list(self.targets), dict(self.basis_params)
        d["layers"] = list(self.layers) if isinstance(self.layers, tuple) else self.layers
        return d

    def kan_kwargs(self, include_layer_args: bool = True) -> dict:
        """Keyword arguments for KANLinear (or, without layer args, for the basis alone)."""
        kw = dict(self.basis_params)
        if self.basis not in basis_lib.BASES:
            raise ValueError(f"kan.basis: unknown basis {self.basis!r}; known: {', '.join(basis_lib.BASES)}")
        if "degree" in basis_lib.BASES[self.basis].defaults:
            kw["degree"] = self.degree
        if include_layer_args:
            kw.update(basis=self.basis, domain=self.domain, base=self.base or None, den_degree=self.den_degree,
                      coef_init=self.coef_init, center=self.center, num_groups=self.num_groups,
                      input_scale=self.input_scale, recompute=bool(self.recompute))
        return kw

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        if self.layers == "all":
            return tuple(range(num_layers))
        if isinstance(self.layers, str):
            n = int(self.layers[5:])
            return tuple(range(max(0, num_layers - n), num_layers))
        bad = [i for i in self.layers if not -num_layers <= i < num_layers]
        if bad:
            raise ValueError(f"kan.layers: indices {bad} outside a {num_layers}-block model")
        return tuple(sorted({i % num_layers for i in self.layers}))
