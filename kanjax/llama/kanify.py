"""KAN-ification: put KAN layers in any projection of a Llama model, optionally parameter-matched.

This is the only module that knows both `kanjax.kan` and `kanjax.llama`; what to convert is a
`KANSpec` (`kanjax.llama.kan_spec`). It works through the
model's projection factory (`llama.Projections`): `kanify(model, spec)` rebuilds the model with a
factory that returns `KANProjection`s for the targeted (kind, layer) pairs and copies every other
parameter from the source.

A `KANProjection` maps (…, in) → (…, out) by one of four strategies,
    replace:    kan(x)
    parallel:   linear(x) + kan(x)
    sequential: kan(linear(x))
    activation: act(linear(x)), act a learnable group-rational activation (`GroupRational`, stored
                as `kan`) that starts as SiLU's least-squares fit: KAT's warm start of the gate
                (or, activation_init="silu_residual", as SiLU + P/Q with P = 0: SiLU exactly)
optionally followed by a linear rank-r "proj" (r → out) when the projection is parameter-matched
through a bottleneck (attention projections, whose widths the heads fix).

Parameter matching (`param_match="width"`): MLP targets shrink the block's intermediate width m
(gate/up/down all change width together) to the m whose block parameter count is closest to the
linear block's; attention targets become in → r → out with the r closest to the linear count.
Each block is matched on its own, so the model total is within a fraction of a percent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.kan import matmul
from kanjax.kan.group_rational import GroupRational
from kanjax.kan.layer import KANLinear, count_params
from kanjax.llama.kan_spec import ATTN_KINDS, GROUPS, MLP_KINDS, KANSpec
from kanjax.llama.model import INIT_STD, LlamaConfig, Projections, axes_meta


class KANProjection(nnx.Module):
    """(…, in) → (…, out) by `strategy` (see module docstring), with an optional rank-r `proj`."""

    def __init__(self, in_features: int, out_features: int, *, strategy: str, spec: KANSpec,
                 rank: int | None, use_bias: bool, axes: tuple, dtype, param_dtype, rngs: nnx.Rngs):
        width = rank or out_features  # output width of the KAN stage
        mid_axis = None if rank else axes[1]
        final_bias = use_bias and not rank
        # The projection starts at the output scale of the linear layer it replaces: Llama's
        # normal(0.02) init gives std 0.02·sqrt(in) for unit inputs (O(1) block outputs would swamp
        # the residual stream of a fresh model). With a rank-r bottleneck ("output" init) the stages
        # before `proj` keep unit scale and `proj` alone brings it to 0.02·sqrt(in); "layerwise" (the
        # old init) gives every stage the 0.02-std scale, which shrinks the bottlenecked projection's
        # output by a further 0.02·sqrt(r) (kan_recipe.md).
        unit = bool(rank) and spec.bottleneck_init == "output"

        def linear(n_in, n_out, bias, ax, std=INIT_STD):
            return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                              dot_general=matmul.dot_general,
                              kernel_init=nnx.initializers.normal(std),
                              kernel_metadata=axes_meta(ax), bias_metadata=axes_meta(ax[1:]))

        def stage_linear(n_in, n_out, bias, ax):
            return linear(n_in, n_out, bias, ax, 1.0 / math.sqrt(n_in) if unit else INIT_STD)

        def kan(n_in, n_out, bias, ax):
            scale = 1.0 if unit else INIT_STD * math.sqrt(n_in)
            return KANLinear(n_in, n_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, axes=ax,
                             init_scale=scale, rngs=rngs, **spec.kan_kwargs())

        self.strategy = strategy
        if strategy == "replace":
            self.linear = None
            self.kan = kan(in_features, width, final_bias, (axes[0], mid_axis))
        elif strategy == "parallel":
            self.linear = stage_linear(in_features, width, final_bias, (axes[0], mid_axis))
            self.kan = kan(in_features, width, False, (axes[0], mid_axis))
        elif strategy == "activation":  # the linear stage keeps the whole map; the rational replaces SiLU
            self.linear = stage_linear(in_features, width, final_bias, (axes[0], mid_axis))
            residual = spec.activation_init == "silu_residual"  # SiLU + P/Q, P = 0: SiLU exactly
            self.kan = GroupRational(width, num_groups=spec.num_groups, degree=spec.degree,
                                     den_degree=spec.den_degree, init="zero" if residual else "silu",
                                     residual=residual, param_dtype=param_dtype)
        else:
            self.linear = stage_linear(in_features, width, False, (axes[0], mid_axis))
            self.kan = kan(width, width, final_bias, (mid_axis, mid_axis))
        proj_std = INIT_STD * math.sqrt(in_features / rank) if unit else INIT_STD
        self.proj = linear(rank, out_features, use_bias, (None, axes[1]), proj_std) if rank else None

    @staticmethod
    def apply_shared(projections: Sequence[KANProjection], x: jax.Array) -> list[jax.Array]:
        """[p(x) for p in projections]: "replace" projections of one input share one basis expansion
        and one matmul (`KANLinear.apply_shared`) before their own rank-r `proj`s; others run alone."""
        if any(p.strategy != "replace" for p in projections):
            return [p(x) for p in projections]
        hs = KANLinear.apply_shared([p.kan for p in projections], x)
        return [h if p.proj is None else p.proj(h) for p, h in zip(projections, hs)]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.strategy == "replace":
            h = self.kan(x)
        elif self.strategy == "parallel":
            h = self.linear(x) + self.kan(x)
        else:  # sequential, activation
            h = self.kan(self.linear(x))
        return h if self.proj is None else self.proj(h)


class KANProjections(Projections):
    """The factory kanify hands the model: KANProjection for targets, plain linear otherwise.

    source: {(kind, layer): (kernel (in, out), bias or None)} from the pretrained model; linear
    parts whose shapes match are copied from it, and init="from_linear" builds KAN stages from it.
    """

    def __init__(self, spec: KANSpec, selected: Sequence[int], ranks: dict, source: dict | None = None):
        self.spec, self.selected, self.ranks, self.source = spec, frozenset(selected), ranks, source or {}

    def __call__(self, kind, layer, in_features, out_features, *, use_bias, axes, dtype, param_dtype, rngs):
        if kind not in self.spec.targets or layer not in self.selected:
            return super().__call__(kind, layer, in_features, out_features, use_bias=use_bias, axes=axes,
                                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        module = KANProjection(in_features, out_features, strategy=self.spec.strategy, spec=self.spec,
                               rank=self.ranks.get(kind), use_bias=use_bias, axes=axes, dtype=dtype,
                               param_dtype=param_dtype, rngs=rngs)
        src = self.source.get((kind, layer))
        # A rank-r bottleneck (param-matched attention) has no stage the full (in, out) map fits.
        if src is not None and module.proj is None and src[0].shape == (in_features, out_features):
            _initialize_from_source(module, self.spec, *src)
        return module


def _initialize_from_source(module: KANProjection, spec: KANSpec, kernel, bias) -> None:
    """Copy the pretrained linear map into the projection; from_linear also seeds the KAN stage."""
    n_in, n_out = kernel.shape
    if module.linear is not None:
        module.linear.kernel[...] = jnp.asarray(kernel, module.linear.kernel.dtype)
        if module.linear.bias is not None and bias is not None:
            module.linear.bias[...] = jnp.asarray(bias, module.linear.bias.dtype)
    if spec.init != "from_linear" or spec.strategy == "activation":  # the rational already starts as SiLU
        return
    kan = module.kan
    if spec.strategy == "parallel":  # the linear branch already is the map: KAN starts at zero
        kan.coef[...] = jnp.zeros_like(kan.coef[...])
        if kan.base:
            kan.base_kernel[...] = jnp.zeros_like(kan.base_kernel[...])
        return
    target_w = kernel if spec.strategy == "replace" else np.eye(n_out, dtype=np.float32)
    target_b = bias if (spec.strategy == "replace" or kan.bias is not None) else None
    ref = KANLinear.from_linear(target_w, target_b, use_bias=kan.bias is not None, axes=kan.axes,
                                param_dtype=kan.param_dtype, **{**spec.kan_kwargs(), "base": None})
    if kan.base:
        kan.base_kernel[...] = jnp.zeros_like(kan.base_kernel[...])
    kan.coef[...] = ref.coef[...]
    if kan.num_groups:  # the group rationals start as the identity, as ref's
        kan.num_coef[...], kan.den_coef[...] = ref.num_coef[...], ref.den_coef[...]
    if kan.bias is not None:
        kan.bias[...] = ref.bias[...] if target_b is not None else jnp.zeros_like(kan.bias[...])


# ----------------------------------------------------------------------------- matching


def _count(build) -> int:
    return count_params(nnx.eval_shape(build))


def _linear_count(n_in, n_out, bias) -> int:
    return n_in * n_out + (n_out if bias else 0)


@functools.lru_cache(maxsize=256)
def _projection_count(spec: KANSpec, kind_is_target: bool, n_in: int, n_out: int, rank, bias: bool) -> int:
    if not kind_is_target:
        return _linear_count(n_in, n_out, bias)
    return _count(lambda: KANProjection(n_in, n_out, strategy=spec.strategy, spec=spec, rank=rank,
                                        use_bias=bias, axes=(None, None), dtype=None,
                                        param_dtype=jnp.float32, rngs=nnx.Rngs(0)))


def _closest(count, target: int, hi: int) -> int:
    """Smallest-error w in [1, hi] for a count(w) that increases with w (ties: the smaller w). Parameter
    counts are affine in a width for every family here: solved from count(1), count(2) and checked at
    count(hi) (each count traces a layer's init, ~30 ms); otherwise a binary search."""
    if hi >= 3:
        c1, c2, chi = count(1), count(2), count(hi)
        slope = c2 - c1
        if slope > 0 and chi == c1 + slope * (hi - 1):
            w = min(max(1 + (target - c1) // slope, 1), hi)  # the largest w with count(w) <= target
            return min((v for v in (w, w + 1) if 1 <= v <= hi), key=lambda v: abs(c1 + slope * (v - 1) - target))
    lo, top = 1, hi
    while lo < top:
        mid = (lo + top) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            top = mid
    return min((w for w in (lo - 1, lo) if w >= 1), key=lambda w: abs(count(w) - target))


def matched_mlp_width(config: LlamaConfig, spec: KANSpec) -> int:
    """Intermediate width at which a KAN MLP block has the linear block's parameters."""
    d, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
    target = round(spec.param_ratio * (2 * _linear_count(d, m, bias) + _linear_count(m, d, bias)))

    def block(w):
        return sum(_projection_count(spec, kind in spec.targets, n_in, n_out, None, bias)
                   for kind, n_in, n_out in (("gate", d, w), ("up", d, w), ("down", w, d)))

    return _closest(block, target, m)


def matched_rank(spec: KANSpec, n_in: int, n_out: int, bias: bool) -> int:
    """Bottleneck rank r at which KAN(in → r) + linear(r → out) has the linear layer's parameters."""
    target = round(spec.param_ratio * _linear_count(n_in, n_out, bias))
    return _closest(lambda r: _projection_count(spec, True, n_in, n_out, r, bias), target, min(n_in, n_out))


# ----------------------------------------------------------------------------- kanify


def kanified_config(config: LlamaConfig, spec: KANSpec) -> tuple[LlamaConfig, dict]:
    """The model config after KAN-ification, and the attention ranks {kind: r} (param matching)."""
    selected = spec.layer_indices(config.num_hidden_layers)
    widths = [config.layer_intermediate_size(i) for i in range(config.num_hidden_layers)]
    acts = [config.layer_activation(i) for i in range(config.num_hidden_layers)]
    mlp_targeted = any(k in spec.targets for k in MLP_KINDS)
    ranks = {}
    if spec.param_match == "width":
        if mlp_targeted:
            w = matched_mlp_width(config, spec)
            widths = [w if i in selected else widths[i] for i in range(len(widths))]
        d, heads = config.hidden_size, config.head_dim
        shapes = {"q": (d, config.num_attention_heads * heads), "k": (d, config.num_key_value_heads * heads),
                  "v": (d, config.num_key_value_heads * heads), "o": (config.num_attention_heads * heads, d)}
        for kind in ATTN_KINDS:
            if kind in spec.targets:
                ranks[kind] = matched_rank(spec, *shapes[kind], config.attention_bias)
    if mlp_targeted:
        acts = [spec.mlp_activation if i in selected else acts[i] for i in range(len(acts))]
    new = dataclasses.replace(
        config,
        intermediate_sizes=None if len(set(widths)) == 1 and widths[0] == config.intermediate_size else tuple(widths),
        mlp_activations=None if set(acts) == {"silu"} else tuple(acts))
    return new, ranks


def _linear_weights(model) -> dict:
    """{(kind, layer): (kernel, bias)} of every plain nnx.Linear projection of the blocks."""
    out = {}
    for i, block in enumerate(model.model.layers):
        for kind in GROUPS["all"]:
            parent = block.self_attn if kind in ATTN_KINDS else block.mlp
            proj = getattr(parent, f"{kind}_proj")
            if isinstance(proj, nnx.Linear):
                bias = None if proj.bias is None else np.asarray(proj.bias[...])
                out[(kind, i)] = (np.asarray(proj.kernel[...]), bias)
    return out


def kanify(model, spec: KANSpec | dict, *, seed: int = 0):
    """A new model with the spec's projections as KAN layers; the input model is untouched.

    Works on LlamaForCausalLM and LlamaForSequenceClassification. Parameters that keep their
    path and shape (embeddings, norms, untargeted projections, heads, linear branches) are copied
    from `model`; KAN stages are random (`init="random"`) or the linear map (`"from_linear"`).
    """
    spec = spec if isinstance(spec, KANSpec) else KANSpec.from_dict(spec)
    if getattr(model, "kan_spec", None) is not None and model.kan_spec.targets:
        raise ValueError("kanify: the model is already KAN-ified; start from the linear model")
    if not spec.targets:
        new = nnx.clone(model)
        new.kan_spec = spec
        return new
    config, ranks = kanified_config(model.config, spec)
    selected = spec.layer_indices(config.num_hidden_layers)
    factory = KANProjections(spec, selected, ranks, _linear_weights(model))
    new = type(model)(config, dtype=model.dtype, param_dtype=model.param_dtype, rngs=nnx.Rngs(seed),
                      projections=factory)
    _copy_matching(model, new)
    new.kan_spec = spec
    return new


def build_model(model_cls, config: LlamaConfig, spec: KANSpec | dict | None, *, dtype=jnp.float32,
                param_dtype=jnp.float32, seed: int = 0, abstract: bool = False):
    """A fresh (random) model of `model_cls` with `spec` applied; abstract=True builds shapes only."""
    spec = spec if isinstance(spec, KANSpec) else KANSpec.from_dict(spec or {})
    new_config, ranks = kanified_config(config, spec) if spec.targets else (config, {})
    factory = KANProjections(spec, spec.layer_indices(config.num_hidden_layers), ranks)

    def build():
        m = model_cls(new_config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed),
                      projections=factory)
        m.kan_spec = spec
        return m

    return nnx.eval_shape(build) if abstract else build()


def _copy_matching(src, dst) -> None:
    """Copy every parameter of src into dst whose path exists in dst with the same shape."""
    src_flat = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
    dst_state = nnx.state(dst, nnx.Param)
    updates = []
    for path, var in nnx.to_flat_state(dst_state):
        other = src_flat.get(path)
        if other is not None and other.get_value().shape == var.get_value().shape:
            updates.append((path, other.get_value()))
    for path, value in updates:
        node = dst
        for key in path[:-1]:
            node = node[key] if isinstance(key, int) else getattr(node, key)
        getattr(node, path[-1])[...] = value


# ----------------------------------------------------------------------------- report


def _kind_of(path: tuple) -> str:
    names = [p for p in path if isinstance(p, str)]
    for name in names:
        if name.endswith("_proj"):
            return name[:-5]
    for name in ("embed_tokens", "lm_head", "score"):
        if name in names:
            return name
    return "norm" if any("norm" in n for n in names) else names[0]


def param_report(model) -> str:
    """Markdown table of parameters per module kind, linear vs KAN, and the ratio to the same
    architecture with every projection linear at its original widths (the linear SmolLM2)."""
    rows: dict[str, list[int]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        n = int(np.prod(var.get_value().shape))
        is_kan = "kan" in [p for p in path if isinstance(p, str)]
        entry = rows.setdefault(_kind_of(path), [0, 0])
        entry[1 if is_kan else 0] += n
    base_cfg = dataclasses.replace(model.config, intermediate_sizes=None, mlp_activations=None)
    linear = build_model(type(model), base_cfg, None, abstract=True)
    lin_rows: dict[str, int] = {}
    for path, var in nnx.to_flat_state(nnx.state(linear, nnx.Param)):
        lin_rows[_kind_of(path)] = lin_rows.get(_kind_of(path), 0) + int(np.prod(var.get_value().shape))
    lines = ["| module | linear params | KAN params | total | linear model | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    order = ["embed_tokens", "q", "k", "v", "o", "gate", "up", "down", "norm", "lm_head", "score"]
    for kind in sorted(set(rows) | set(lin_rows), key=lambda k: order.index(k) if k in order else 99):
        lin, kan = rows.get(kind, [0, 0])
        ref = lin_rows.get(kind, 0)
        ratio = f"{(lin + kan) / ref:.3f}" if ref else "-"
        lines.append(f"| {kind} | {lin:,} | {kan:,} | {lin + kan:,} | {ref:,} | {ratio} |")
    tot_lin = sum(v[0] for v in rows.values())
    tot_kan = sum(v[1] for v in rows.values())
    ref = sum(lin_rows.values())
    lines.append(f"| **total** | {tot_lin:,} | {tot_kan:,} | {tot_lin + tot_kan:,} | {ref:,} "
                 f"| {(tot_lin + tot_kan) / ref:.4f} |")
    return "\n".join(lines)
