"""KAN-ified Llama (SmolLM2) in plain PyTorch: transformers remote code written by kanjax.

`kanjax.hf.save_pretrained` copies this file, unchanged, into every export of a KAN-ified
model; the export's config.json points at it through `auto_map`, so

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

builds this model and loads kanjax's tensors under kanjax's own names and layouts:

    <projection>.kan.coef         (in, K, out)   basis coefficients
    <projection>.kan.bias         (out,)
    <projection>.kan.base_kernel  (in, out)      residual branch (base "silu" / "linear")
    <projection>.kan.den_coef     (in, n)        rational denominator; (G, n) for group_rational
    <projection>.kan.num_coef     (G, m + 1)     group_rational numerators (one per channel group)
    <projection>.kan.input_scale  (in,)          per-channel input scale (kan["input_scale"])
    <projection>.linear.weight    (width, in)    linear stage (parallel / sequential)
    <projection>.proj.weight      (out, rank)    rank-r bottleneck (parameter-matched attention)

With strategy "activation" the projection is act(linear(x)), act the group-rational activation
(`KanjaxGroupRational`: `num_coef` (G, m + 1), `den_coef` (G, n) under `<projection>.kan`; with
kan["activation_init"] "silu_residual" it computes SiLU + P/Q).

Embeddings, norms, RoPE (llama3 scaling included), attention and the heads are transformers'
own Llama modules; only the projections the KANSpec targets and the per-layer MLP widths and
activations differ. The KAN layer mirrors `kanjax.kan.KANLinear` operation by operation:

    u   = squash(s * x)             tanh | layernorm (standardise, then tanh) | clip | none
                                    (s: the learned input_scale, when the spec has one)
    t   = lo + (u + 1)(hi - lo)/2   onto the basis interval (skipped for "none" / (-1, 1))
    phi = B_k(t) * s_k              active columns k, s_k = 1 / max|B_k| on the interval
    y   = phi.reshape(.., in*K) @ coef.reshape(in*K, out) + base(x) @ base_kernel + bias

The basis is evaluated in float32 whatever the model dtype (as kanjax does). The families, the
domain maps and the column layout are not restated here: `kanjax_basis.py` beside this file is
kanjax's own `kanjax/kan/basis_terms.py`, copied unchanged at export, and is called with ``xp=torch``.

Depends only on torch, numpy and transformers; never imports kanjax.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration_kanjax_llama import KanjaxLlamaConfig
from .kanjax_basis import (
    BASES,
    column_layout,
    freeze,
    group_index,
    group_rational,
    identity_rational,
    resolve_params,
    squash,
    to_interval,
)

try:  # transformers >= 5: init functions that skip tensors already loaded from the checkpoint
    from transformers import initialization as _init
except ImportError:  # older transformers
    _init = nn.init

# ----------------------------------------------------------------------------- KAN layer


class KanjaxKANLinear(nn.Module):
    """KAN layer (..., in_features) -> (..., out_features), kanjax.kan.KANLinear's forward.

    Parameters: coef (in, K, out); bias (out,) if use_bias; base_kernel (in, out) if base;
    den_coef (in, den_degree) for the rational family with den_degree > 0; num_coef (G, degree + 1)
    and den_coef (G, den_degree) for group_rational (G = min(num_groups, in)); input_scale (in,).
    """

    def __init__(self, in_features: int, out_features: int, *, basis: str, degree: int, domain: str,
                 center: str, base, den_degree: int, use_bias: bool, basis_params: dict, num_groups: int = 8,
                 input_scale: bool = False):
        super().__init__()
        params = {k: freeze(v) for k, v in basis_params.items()}
        if "degree" in BASES[basis].defaults:
            params["degree"] = degree
        self.basis, self.domain, self.base = basis, domain, base
        self.in_features, self.out_features = in_features, out_features
        self.basis_params = resolve_params(basis, **params)
        self.interval = tuple(float(v) for v in BASES[basis].interval(**self.basis_params))
        items = tuple(sorted((k, freeze(v)) for k, v in self.basis_params.items()))
        self.active, self.offsets, self.scales = column_layout(basis, items, domain, center)
        self.coef = nn.Parameter(torch.empty(in_features, len(self.active), out_features))
        self.base_kernel = nn.Parameter(torch.empty(in_features, out_features)) if base else None
        self.bias = nn.Parameter(torch.empty(out_features)) if use_bias else None
        n_den = den_degree if basis == "rational" else 0
        self.den_coef = nn.Parameter(torch.empty(in_features, n_den)) if n_den else None
        self.num_coef, self.num_groups = None, 0
        if basis == "group_rational":  # identity start (P = x, Q = 1), as kanjax; loading overwrites it
            self.num_groups = min(num_groups, in_features)
            a, b = identity_rational(self.basis_params["degree"], den_degree)
            self.num_coef = nn.Parameter(torch.tensor(a, dtype=torch.float32).repeat(self.num_groups, 1))
            self.den_coef = nn.Parameter(torch.tensor(b, dtype=torch.float32).repeat(self.num_groups, 1))
        self.input_scale = nn.Parameter(torch.ones(in_features)) if input_scale else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(..., i) -> (..., i, K) normalised basis values, float32."""
        lo, hi = self.interval
        x = x.float() if self.input_scale is None else x.float() * self.input_scale.float()
        t = to_interval(squash(x, self.domain, torch), lo, hi, self.domain)
        params = dict(self.basis_params)
        if self.num_coef is not None:  # each feature gets its group's rational
            idx = group_index(self.in_features, self.num_groups)
            params["num_coef"], params["den_coef"] = self.num_coef.float()[idx], self.den_coef.float()[idx]
        elif self.den_coef is not None:
            params["den_coef"] = self.den_coef.float()
        cols = BASES[self.basis].terms(t, torch, **params)
        phi = torch.stack([cols[k] for k in self.active], dim=-1)
        # Built per call (a handful of floats): no buffer to place, cast or load.
        offsets = torch.tensor(self.offsets, dtype=torch.float32, device=x.device)
        return (phi - offsets) * torch.tensor(self.scales, dtype=torch.float32, device=x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.features(x).to(x.dtype)
        n_in, n_cols, n_out = self.coef.shape
        # One matmul over the flattened (input, basis) axis, as kanjax.
        y = phi.reshape(*x.shape[:-1], n_in * n_cols) @ self.coef.to(x.dtype).reshape(n_in * n_cols, n_out)
        if self.base_kernel is not None:
            xb = F.silu(x) if self.base == "silu" else x
            y = y + xb @ self.base_kernel.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, basis={self.basis}, K={len(self.active)}, "
                f"domain={self.domain}, base={self.base}")


class KanjaxGroupRational(nn.Module):
    """kanjax.kan.group_rational.GroupRational: (..., C) -> (..., C), channel c through its group's
    P/Q (kanjax_basis.group_rational; SiLU + P/Q when residual), in float32 whatever the model dtype."""

    def __init__(self, features: int, *, num_groups: int, degree: int, den_degree: int, residual: bool = False):
        super().__init__()
        self.features, self.num_groups, self.residual = features, min(num_groups, features), residual
        self.num_coef = nn.Parameter(torch.empty(self.num_groups, degree + 1))
        self.den_coef = nn.Parameter(torch.empty(self.num_groups, den_degree))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_rational(x.float(), self.num_coef.float(), self.den_coef.float(), torch,
                              residual=self.residual).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.features}, groups={self.num_groups}, degree=({self.num_coef.shape[1] - 1}, "
                f"{self.den_coef.shape[1]}), residual={self.residual}")


class KanjaxKANProjection(nn.Module):
    """(..., in) -> (..., out), kanjax.llama.kanify.KANProjection:

        replace:    kan(x)
        parallel:   linear(x) + kan(x)
        sequential: kan(linear(x))
        activation: kan(linear(x)), kan a KanjaxGroupRational (the gate's SiLU replaced)

    then, with a rank r, a linear bottleneck proj (r -> out).
    """

    def __init__(self, in_features: int, out_features: int, *, kan: dict, rank, use_bias: bool):
        super().__init__()
        self.strategy = kan["strategy"]
        width = rank or out_features  # output width of the KAN stage
        final_bias = use_bias and not rank

        def kan_layer(n_in, n_out, bias):
            # kanjax writes every field of its KANSpec into config.json: no defaults here, but for
            # `center`, which exports older than it lack (their layers are uncentred).
            return KanjaxKANLinear(
                n_in, n_out, basis=kan["basis"], degree=int(kan["degree"]), domain=kan["domain"],
                center=kan.get("center", "none"), base=kan["base"], den_degree=int(kan["den_degree"]),
                use_bias=bias,
                basis_params=dict(kan["basis_params"] or {}),
                # absent from exports older than these options: their defaults are the old layer
                num_groups=int(kan.get("num_groups", 8)), input_scale=bool(kan.get("input_scale", False)))

        if self.strategy == "replace":
            self.linear = None
            self.kan = kan_layer(in_features, width, final_bias)
        elif self.strategy == "parallel":
            self.linear = nn.Linear(in_features, width, bias=final_bias)
            self.kan = kan_layer(in_features, width, False)
        elif self.strategy == "activation":
            self.linear = nn.Linear(in_features, width, bias=final_bias)
            self.kan = KanjaxGroupRational(width, num_groups=int(kan["num_groups"]), degree=int(kan["degree"]),
                                           den_degree=int(kan["den_degree"]),
                                           # absent from exports older than it: the rational fit of SiLU
                                           residual=kan.get("activation_init", "silu_fit") == "silu_residual")
        elif self.strategy == "sequential":
            self.linear = nn.Linear(in_features, width, bias=False)
            self.kan = kan_layer(width, width, final_bias)
        else:
            raise ValueError(f"unknown KAN strategy {self.strategy!r}")
        self.proj = nn.Linear(rank, out_features, bias=use_bias) if rank else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strategy == "replace":
            h = self.kan(x)
        elif self.strategy == "parallel":
            h = self.linear(x) + self.kan(x)
        else:  # sequential, activation
            h = self.kan(self.linear(x))
        return h if self.proj is None else self.proj(h)


# ----------------------------------------------------------------------------- which projections


def is_kan(config, kind: str, layer: int) -> bool:
    """Whether kanjax exported this projection as KAN: `kan["targets"]` holds the projection kinds
    (groups already expanded) and `kan_layers` the block indices, both resolved by kanjax."""
    return bool(config.kan) and kind in config.kan["targets"] and layer in (config.kan_layers or ())


def projection(config, kind: str, layer: int, in_features: int, out_features: int, use_bias: bool) -> nn.Module:
    """The module for one projection: a KAN projection where the spec says so, else nn.Linear."""
    if not is_kan(config, kind, layer):
        return nn.Linear(in_features, out_features, bias=use_bias)
    rank = (config.kan_ranks or {}).get(kind)
    return KanjaxKANProjection(in_features, out_features, kan=config.kan, rank=rank and int(rank),
                               use_bias=use_bias)


def layer_width(config, layer: int) -> int:
    sizes = config.intermediate_sizes
    return config.intermediate_size if sizes is None else int(sizes[layer])


def layer_activation(config, layer: int) -> str:
    acts = config.mlp_activations
    return "silu" if acts is None else acts[layer]


# ----------------------------------------------------------------------------- Llama modules


class KanjaxLlamaMLP(nn.Module):
    """down(act(gate(x)) * up(x)) with this layer's width and activation ("silu" or "none")."""

    def __init__(self, config: KanjaxLlamaConfig, layer_idx: int):
        super().__init__()
        d, m, bias = config.hidden_size, layer_width(config, layer_idx), config.mlp_bias
        self.gate_proj = projection(config, "gate", layer_idx, d, m, bias)
        self.up_proj = projection(config, "up", layer_idx, d, m, bias)
        self.down_proj = projection(config, "down", layer_idx, m, d, bias)
        self.activation = layer_activation(config, layer_idx)
        if self.activation not in ("silu", "none"):
            raise ValueError(f"layer {layer_idx}: unknown MLP activation {self.activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.activation == "silu":
            gate = F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class KanjaxLlamaDecoderLayer(LlamaDecoderLayer):
    """transformers' Llama block (norms, attention, forward) with KAN projections swapped in."""

    def __init__(self, config: KanjaxLlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        attn = self.self_attn
        d, e = config.hidden_size, attn.head_dim
        shapes = {"q": (d, config.num_attention_heads * e), "k": (d, config.num_key_value_heads * e),
                  "v": (d, config.num_key_value_heads * e), "o": (config.num_attention_heads * e, d)}
        for kind, (n_in, n_out) in shapes.items():
            if is_kan(config, kind, layer_idx):
                setattr(attn, f"{kind}_proj",
                        projection(config, kind, layer_idx, n_in, n_out, config.attention_bias))
        self.mlp = KanjaxLlamaMLP(config, layer_idx)


class KanjaxLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = KanjaxLlamaConfig
    config: KanjaxLlamaConfig
    _no_split_modules = ["KanjaxLlamaDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Fresh models only (loading skips this): KAN parameters get small random values.

        kanjax's variance-preserving init is not reproduced; export trained models instead."""
        super()._init_weights(module)
        if isinstance(module, KanjaxKANLinear):
            std = getattr(self.config, "initializer_range", 0.02)
            _init.normal_(module.coef, mean=0.0, std=std)
            if module.base_kernel is not None:
                _init.normal_(module.base_kernel, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
            if module.den_coef is not None:
                # |sum b x^j| has zero gradient at b = 0: start small but non-zero.
                _init.normal_(module.den_coef, mean=0.0, std=0.1)
            if module.num_coef is not None:
                _init.normal_(module.num_coef, mean=0.0, std=0.1)
            if module.input_scale is not None:
                _init.ones_(module.input_scale)
        if isinstance(module, KanjaxGroupRational):
            _init.normal_(module.num_coef, mean=0.0, std=0.1)
            _init.zeros_(module.den_coef)


class KanjaxLlamaModel(KanjaxLlamaPreTrainedModel, LlamaModel):
    """LlamaModel (forward inherited) whose blocks are KanjaxLlamaDecoderLayer."""

    def __init__(self, config: KanjaxLlamaConfig):
        LlamaPreTrainedModel.__init__(self, config)  # not LlamaModel's: it would build plain blocks
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [KanjaxLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class KanjaxLlamaForCausalLM(KanjaxLlamaPreTrainedModel, LlamaForCausalLM):
    """Causal LM head (tied or untied) over KanjaxLlamaModel; forward and generate inherited."""

    def __init__(self, config: KanjaxLlamaConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = KanjaxLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class KanjaxLlamaForSequenceClassification(KanjaxLlamaPreTrainedModel, LlamaForSequenceClassification):
    """Sequence classifier over KanjaxLlamaModel; forward inherited from transformers, which
    pools the rightmost token that is not pad_token_id (kanjax pools by attention_mask: the same
    whenever padding uses the pad id)."""

    def __init__(self, config: KanjaxLlamaConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = KanjaxLlamaModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


__all__ = [
    "KanjaxLlamaConfig", "KanjaxKANLinear", "KanjaxKANProjection", "KanjaxLlamaModel",
    "KanjaxLlamaForCausalLM", "KanjaxLlamaForSequenceClassification", "KanjaxLlamaPreTrainedModel",
]
