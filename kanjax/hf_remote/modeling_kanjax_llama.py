"""KAN-ified Llama (SmolLM2) in plain PyTorch: transformers remote code written by kanjax.

`kanjax.hf.save_pretrained` copies this file, unchanged, into every export of a KAN-ified
model; the export's config.json points at it through `auto_map`, so

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

builds this model and loads kanjax's tensors under kanjax's own names and layouts:

    <projection>.kan.coef         (in, K, out)   basis coefficients
    <projection>.kan.bias         (out,)
    <projection>.kan.base_kernel  (in, out)      residual branch (base "silu" / "linear")
    <projection>.kan.den_coef     (in, n)        rational denominator
    <projection>.linear.weight    (width, in)    linear stage (parallel / sequential)
    <projection>.proj.weight      (out, rank)    rank-r bottleneck (parameter-matched attention)

Embeddings, norms, RoPE (llama3 scaling included), attention and the heads are transformers'
own Llama modules; only the projections the KANSpec targets and the per-layer MLP widths and
activations differ. The KAN layer mirrors `kanjax.kan.KANLinear` operation by operation:

    u   = squash(x)                 tanh | layernorm (standardise, then tanh) | clip | none
    t   = lo + (u + 1)(hi - lo)/2   onto the basis interval (skipped for "none" / (-1, 1))
    phi = B_k(t) * s_k              active columns k, s_k = 1 / max|B_k| on the interval
    y   = phi.reshape(.., in*K) @ coef.reshape(in*K, out) + base(x) @ base_kernel + bias

The basis is evaluated in float32 whatever the model dtype (as kanjax does); `active` and `s_k`
are computed in float64 numpy exactly as kanjax computes them. Each basis family is one scalar
`terms(x, xp, **params)` function (copied from `kanjax.basis`) that serves both numpy (the
constants) and torch (the forward pass).

Depends only on torch, numpy and transformers; never imports kanjax.
"""

import numbers

import numpy as np
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

try:  # transformers >= 5: init functions that skip tensors already loaded from the checkpoint
    from transformers import initialization as _init
except ImportError:  # older transformers
    _init = nn.init

ATTN_KINDS = ("q", "k", "v", "o")
MLP_KINDS = ("gate", "up", "down")
GROUPS = {"attn": ATTN_KINDS, "mlp": MLP_KINDS, "all": ATTN_KINDS + MLP_KINDS}


# ----------------------------------------------------------------------------- basis families
# Same recurrences, in the same operation order, as kanjax.basis: x is a numpy float64 array
# (constants) or a torch float32 tensor (forward); xp is the matching module.


def _full(x, xp, v):
    # Constant columns must still be arrays shaped and typed like x.
    return xp.full_like(x, v) if isinstance(v, numbers.Number) else v


def _recurrence(x, xp, degree, p0, p1, step):
    """[P_0, ..., P_degree] from P_0, P_1 and step(n, P_{n-1}, P_{n-2}) -> P_n."""
    ps = [p0, p1]
    for n in range(2, degree + 1):
        ps.append(step(n, ps[-1], ps[-2]))
    return [_full(x, xp, p) for p in ps[: degree + 1]]


def _chebyshev(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, x, lambda n, a, b: 2 * x * a - b)


def _chebyshev2(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 2 * x, lambda n, a, b: 2 * x * a - b)


def _legendre(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, x,
                       lambda n, a, b: ((2 * n - 1) / n) * x * a - ((n - 1) / n) * b)


def _hermite(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 2 * x,
                       lambda n, a, b: 2 * x * a - (2 * (n - 1)) * b)


def _laguerre(x, xp, degree, alpha):
    return _recurrence(x, xp, degree, 1.0, (1 + alpha) - x,
                       lambda n, a, b: (((2 * n - 1 + alpha) / n) - x / n) * a
                       - ((n - 1 + alpha) / n) * b)


def _jacobi(x, xp, degree, alpha, beta):
    s = alpha + beta

    def step(n, a, b):
        c = 2 * n + s
        den = 2 * n * (n + s) * (c - 2)
        lin = (c - 1) * c * (c - 2) / den
        off = (c - 1) * (alpha * alpha - beta * beta) / den
        back = 2 * (n + alpha - 1) * (n + beta - 1) * c / den
        return (lin * x + off) * a - back * b

    return _recurrence(x, xp, degree, 1.0, (alpha + 1) + (s + 2) * 0.5 * (x - 1), step)


def _gegenbauer(x, xp, degree, alpha):
    return _recurrence(x, xp, degree, 1.0, (2 * alpha) * x,
                       lambda n, a, b: (2 * (n + alpha - 1) / n) * x * a
                       - ((n + 2 * alpha - 2) / n) * b)


def _bessel(x, xp, degree):
    return _recurrence(x, xp, degree, 1.0, 1 + x, lambda n, a, b: (2 * n - 1) * x * a + b)


def _fibonacci(x, xp, degree):
    return _recurrence(x, xp, degree, 0.0, 1.0, lambda n, a, b: x * a + b)


def _lucas(x, xp, degree):
    return _recurrence(x, xp, degree, 2.0, x, lambda n, a, b: x * a + b)


def _bspline(x, xp, grid, order, grid_range):
    lo, hi = grid_range
    h = (hi - lo) / grid
    t = [lo + (j - order) * h for j in range(grid + 2 * order + 1)]
    one, zero = xp.ones_like(x), xp.zeros_like(x)
    # Half-open indicators: a partition of unity on [lo, hi), exactly 0 far outside.
    b = [xp.where((x >= t[j]) & (x < t[j + 1]), one, zero) for j in range(len(t) - 1)]
    for p in range(1, order + 1):  # uniform knots: both denominators are p*h
        inv = 1.0 / (p * h)
        b = [((x - t[j]) * b[j] + (t[j + p + 1] - x) * b[j + 1]) * inv
             for j in range(len(b) - 1)]
    return b


def _rbf_layout(num_centers, centers, width, grid_range):
    """(centers tuple, width) with the defaults filled in."""
    lo, hi = grid_range
    if centers is None:
        centers = tuple(float(c) for c in np.linspace(lo, hi, num_centers))
    if width is None:
        width = (hi - lo) / max(len(centers) - 1, 1)
    return tuple(centers), width


def _rbf(x, xp, num_centers, centers, width, grid_range):
    centers, width = _rbf_layout(num_centers, centers, width, grid_range)
    inv = 1.0 / width
    return [xp.exp(-(((x - c) * inv) ** 2)) for c in centers]


def _rational(x, xp, degree, den_coef):
    cols, power = [_full(x, xp, 1.0)], x
    for _ in range(degree):
        cols.append(power)
        power = power * x
    if den_coef is None or den_coef.shape[-1] == 0:
        return cols
    # Horner for sum_{j>=1} b_j x^j; den_coef (features, n) broadcasts along x's last axis.
    s = 0.0
    for j in reversed(range(den_coef.shape[-1])):
        s = (s + den_coef[..., j]) * x
    inv_q = 1.0 / (1.0 + xp.abs(s))
    return [c * inv_q for c in cols]


def _poly(terms, interval=(-1.0, 1.0), **extra):
    return terms, {"degree": 2, **extra}, lambda p: interval


def _on_grid(terms, defaults):
    return terms, defaults, lambda p: tuple(p["grid_range"])


# name -> (terms, defaults, interval(params)); defaults and intervals are kanjax.basis's.
BASES = {
    "chebyshev": _poly(_chebyshev),
    "chebyshev2": _poly(_chebyshev2),
    "legendre": _poly(_legendre),
    "hermite": _poly(_hermite, interval=(-2.0, 2.0)),
    "laguerre": _poly(_laguerre, interval=(0.0, 4.0), alpha=0.0),
    "jacobi": _poly(_jacobi, alpha=1.0, beta=1.0),
    "gegenbauer": _poly(_gegenbauer, alpha=1.5),
    "bessel": _poly(_bessel),
    "fibonacci": _poly(_fibonacci),
    "lucas": _poly(_lucas),
    "bspline": _on_grid(_bspline, {"grid": 5, "order": 3, "grid_range": (-1.0, 1.0)}),
    "rbf": _on_grid(_rbf, {"num_centers": 8, "centers": None, "width": None, "grid_range": (-1.0, 1.0)}),
    "rational": (_rational, {"degree": 3, "den_coef": None}, lambda p: (-1.0, 1.0)),
}

_INTS = ("degree", "grid", "order", "num_centers")
_REALS = ("alpha", "beta")


def resolve_basis_params(name: str, **params) -> dict:
    """The family's defaults merged with `params`, normalised as kanjax.basis.resolve_params does."""
    if name not in BASES:
        raise ValueError(f"unknown basis {name!r}; known bases: {', '.join(BASES)}")
    defaults = BASES[name][1]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"basis {name!r}: unknown keyword(s) {unknown}")
    p = {**defaults, **params}
    for key in set(p) & set(_INTS):
        p[key] = int(p[key])
    for key in set(p) & set(_REALS):
        p[key] = float(p[key])
    if "grid_range" in p:
        p["grid_range"] = tuple(float(v) for v in p["grid_range"])
    if p.get("width") is not None:
        p["width"] = float(p["width"])
    if p.get("centers") is not None:
        p["centers"] = tuple(float(c) for c in np.asarray(p["centers"], np.float64).reshape(-1))
        p["num_centers"] = len(p["centers"])
    return p


def basis_interval(name: str, params: dict) -> tuple:
    return tuple(float(v) for v in BASES[name][2](params))


def expand_numpy(name: str, x: np.ndarray, params: dict) -> np.ndarray:
    """(n,) float64 points -> (n, K) basis columns in float64 (no denominator for rational)."""
    x = np.asarray(x, np.float64)
    cols = BASES[name][0](x, np, **params)
    return np.stack([np.broadcast_to(c, x.shape) for c in cols], axis=-1)


def column_scales(name: str, params: dict) -> tuple:
    """(active, scales): columns not identically zero on the interval and 1/max|B_k| for each,
    from 4001 points in float64, as kanjax.kan._column_scales."""
    lo, hi = basis_interval(name, params)
    grid = np.linspace(lo, hi, 4001)
    peak = np.max(np.abs(expand_numpy(name, grid, params)), axis=0)  # (K,)
    active = tuple(int(k) for k in np.flatnonzero(peak > 0))
    return active, tuple(float(1.0 / peak[k]) for k in active)


# ----------------------------------------------------------------------------- KAN layer


def squash(x: torch.Tensor, domain: str) -> torch.Tensor:
    """(..., i) -> (..., i) in [-1, 1] (unchanged for "none"), in x's dtype (float32 here)."""
    if domain == "tanh":
        return torch.tanh(x)
    if domain == "clip":
        return torch.clamp(x, -1.0, 1.0)
    if domain == "layernorm":
        # Standardise over features first so the basis sees the same spread at any scale.
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).square().mean(dim=-1, keepdim=True)
        return torch.tanh((x - mean) * torch.rsqrt(var + 1e-5))
    if domain == "none":
        return x
    raise ValueError(f"unknown KAN domain {domain!r}")


def to_interval(u: torch.Tensor, lo: float, hi: float, domain: str) -> torch.Tensor:
    """Map the squashed input u in [-1, 1] onto the basis interval [lo, hi]."""
    if domain == "none" or (lo, hi) == (-1.0, 1.0):
        return u
    return lo + (u + 1.0) * (0.5 * (hi - lo))


class KanjaxKANLinear(nn.Module):
    """KAN layer (..., in_features) -> (..., out_features), kanjax.kan.KANLinear's forward.

    Parameters: coef (in, K, out); bias (out,) if use_bias; base_kernel (in, out) if base;
    den_coef (in, den_degree) for the rational family with den_degree > 0.
    """

    def __init__(self, in_features: int, out_features: int, *, basis: str, degree: int, domain: str,
                 base, den_degree: int, use_bias: bool, basis_params: dict):
        super().__init__()
        params = dict(basis_params)
        if "degree" in BASES[basis][1]:
            params["degree"] = degree
        self.basis, self.domain, self.base = basis, domain, base
        self.in_features, self.out_features = in_features, out_features
        self.basis_params = resolve_basis_params(basis, **params)
        self.interval = basis_interval(basis, self.basis_params)
        self.active, self.scales = column_scales(basis, self.basis_params)
        self.coef = nn.Parameter(torch.empty(in_features, len(self.active), out_features))
        self.base_kernel = nn.Parameter(torch.empty(in_features, out_features)) if base else None
        self.bias = nn.Parameter(torch.empty(out_features)) if use_bias else None
        n_den = den_degree if basis == "rational" else 0
        self.den_coef = nn.Parameter(torch.empty(in_features, n_den)) if n_den else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(..., i) -> (..., i, K) normalised basis values, float32."""
        lo, hi = self.interval
        t = to_interval(squash(x.float(), self.domain), lo, hi, self.domain)
        params = dict(self.basis_params)
        if self.den_coef is not None:
            params["den_coef"] = self.den_coef.float()
        cols = BASES[self.basis][0](t, torch, **params)
        phi = torch.stack([cols[k] for k in self.active], dim=-1)
        # Built per call (a handful of floats): no buffer to place, cast or load.
        return phi * torch.tensor(self.scales, dtype=torch.float32, device=x.device)

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


class KanjaxKANProjection(nn.Module):
    """(..., in) -> (..., out), kanjax.kanify.KANProjection:

        replace:    kan(x)
        parallel:   linear(x) + kan(x)
        sequential: kan(linear(x))

    then, with a rank r, a linear bottleneck proj (r -> out).
    """

    def __init__(self, in_features: int, out_features: int, *, kan: dict, rank, use_bias: bool):
        super().__init__()
        self.strategy = kan.get("strategy", "replace")
        width = rank or out_features  # output width of the KAN stage
        final_bias = use_bias and not rank

        def kan_layer(n_in, n_out, bias):
            return KanjaxKANLinear(
                n_in, n_out, basis=kan.get("basis", "chebyshev2"), degree=int(kan.get("degree", 2)),
                domain=kan.get("domain", "tanh"), base=kan.get("base"),
                den_degree=int(kan.get("den_degree", 2)), use_bias=bias,
                basis_params=dict(kan.get("basis_params") or {}))

        if self.strategy == "replace":
            self.linear = None
            self.kan = kan_layer(in_features, width, final_bias)
        elif self.strategy == "parallel":
            self.linear = nn.Linear(in_features, width, bias=final_bias)
            self.kan = kan_layer(in_features, width, False)
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
        else:
            h = self.kan(self.linear(x))
        return h if self.proj is None else self.proj(h)


# ----------------------------------------------------------------------------- which projections


def kan_kinds(config) -> tuple:
    """Projection kinds the KANSpec targets (groups expanded), in kanjax's order."""
    targets = (config.kan or {}).get("targets") or ()
    targets = (targets,) if isinstance(targets, str) else targets
    kinds = {k for t in targets for k in GROUPS.get(t, (t,))}
    return tuple(k for k in GROUPS["all"] if k in kinds)


def kan_layers(config) -> frozenset:
    """Block indices the KANSpec selects: "all", "last:N" or a list (negative = from the end)."""
    n = config.num_hidden_layers
    layers = (config.kan or {}).get("layers", "all")
    if layers == "all":
        return frozenset(range(n))
    if isinstance(layers, str):
        return frozenset(range(max(0, n - int(layers[len("last:"):])), n))
    return frozenset(int(i) % n for i in layers)


def is_kan(config, kind: str, layer: int) -> bool:
    return kind in kan_kinds(config) and layer in kan_layers(config)


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
