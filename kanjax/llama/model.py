"""SmolLM2 / Llama decoder in Flax NNX, numerically matching transformers' LlamaForCausalLM.

Shape letters used in docstrings: b batch, t query time, s key time (cache length when
decoding), d model width, h query heads, k kv heads, g = h // k, e head dim, v vocab.

The attribute paths of all parameters are a contract with ``kanjax.hf`` (HF tensor names):
``model.embed_tokens.embedding`` <- ``model.embed_tokens.weight``, ``model.layers[i].self_attn.q_proj.kernel``
<- ``model.layers.{i}.self_attn.q_proj.weight`` (transposed: our kernels are (in, out)), etc.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from kanjax.kan import matmul
from kanjax.llama.attention import (
    KVCache,
    apply_rope,
    attention,
    attention_mask_bool,
    blocked_causal_attention,
    default_positions,
    rope_cos_sin,
    rope_inv_freq,
)

INIT_STD = 0.02  # transformers' default initializer_range; only matters for fresh (untrained) models
_ACTIVATIONS = ("silu", "none")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def axes_meta(axes) -> dict:
    # eager_sharding=False: record logical names for nnx.get_partition_spec without needing a mesh.
    return {"out_sharding": tuple(axes), "eager_sharding": False}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int | None = None
    rope_theta: float = 100000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    num_labels: int = 4
    intermediate_sizes: tuple[int, ...] | None = None
    mlp_activations: tuple[str, ...] | None = None

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)  # frozen: normalise fields in place once
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "num_labels"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) is not divisible by "
                                 f"num_attention_heads ({self.num_attention_heads}); set head_dim")
            put("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                             f"num_attention_heads ({self.num_attention_heads})")
        if isinstance(self.eos_token_id, (list, tuple)):
            put("eos_token_id", tuple(int(i) for i in self.eos_token_id))
        put("rope_scaling", _normalise_rope_scaling(self.rope_scaling, self.max_position_embeddings))
        n = self.num_hidden_layers
        if self.intermediate_sizes is not None:
            put("intermediate_sizes", tuple(int(w) for w in self.intermediate_sizes))
            if len(self.intermediate_sizes) != n or min(self.intermediate_sizes) < 1:
                raise ValueError(f"intermediate_sizes must hold {n} positive widths, got {self.intermediate_sizes}")
        if self.mlp_activations is not None:
            put("mlp_activations", tuple(self.mlp_activations))
            bad = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
            if len(self.mlp_activations) != n or bad:
                raise ValueError(f"mlp_activations must hold {n} entries from {_ACTIVATIONS}, "
                                 f"got {self.mlp_activations}")

    def __hash__(self):
        # rope_scaling is a dict; hash it as items so the config can be static (jit, nnx graphdef).
        items = tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return hash(tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in items))

    def layer_intermediate_size(self, i: int) -> int:
        return self.intermediate_size if self.intermediate_sizes is None else self.intermediate_sizes[i]

    def layer_activation(self, i: int) -> str:
        return "silu" if self.mlp_activations is None else self.mlp_activations[i]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @classmethod
    def from_hf(cls, config: dict | str | Path) -> LlamaConfig:
        """From a transformers config dict, a config.json path or a folder holding config.json.

        Understands both the transformers<5 layout (rope_theta + rope_scaling) and the v5 one
        (rope_parameters); unrelated keys are ignored.
        """
        if not isinstance(config, dict):
            path = Path(config)
            config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (only 'silu')")
        if config.get("rope_interleaved"):
            raise ValueError("rope_interleaved=True is not supported (rotate-half layout only)")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        rope = config.get("rope_parameters")
        if rope:  # v5 layout supersedes rope_theta/rope_scaling
            if "rope_theta" in rope:
                kwargs["rope_theta"] = rope["rope_theta"]
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            kwargs["rope_scaling"] = scaling if _rope_type(scaling) != "default" else None
        if "num_labels" not in config and config.get("id2label"):
            kwargs["num_labels"] = len(config["id2label"])
        if kwargs.get("head_dim") is None:
            kwargs.pop("head_dim", None)
        return cls(**kwargs)

    def to_hf(self, architecture: str = "LlamaForCausalLM", dtype: str = "float32") -> dict:
        """A config.json dict that ``transformers.LlamaConfig`` (v4 and v5) accepts."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.pop("num_labels")
        for key in ("intermediate_sizes", "mlp_activations"):  # kanjax extensions, only when used
            d[key] = list(d[key]) if d[key] is not None else d.pop(key)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        scaling = dict(self.rope_scaling) if self.rope_scaling else None
        d["rope_scaling"] = scaling
        d["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta}
        return {
            "architectures": [architecture], "model_type": "llama", "hidden_act": "silu",
            **d,
            "attention_dropout": 0.0, "initializer_range": INIT_STD, "pretraining_tp": 1, "use_cache": True,
            "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
            "label2id": {f"LABEL_{i}": i for i in range(self.num_labels)},
            "torch_dtype": dtype, "dtype": dtype,
        }


def _rope_type(scaling: dict) -> str:
    return scaling.get("rope_type", scaling.get("type", "default"))


def _normalise_rope_scaling(scaling: dict | None, max_positions: int) -> dict | None:
    if scaling is None:
        return None
    kind = _rope_type(scaling)
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"rope_scaling: unsupported rope_type {kind!r} (only 'llama3' or None)")
    out = {k: v for k, v in scaling.items() if k != "type"}
    out["rope_type"] = "llama3"
    out.setdefault("original_max_position_embeddings", max_positions)  # as transformers does
    missing = [k for k in _LLAMA3_KEYS if k not in out]
    if missing:
        raise ValueError(f"rope_scaling: llama3 needs keys {missing}")
    return out


# ----------------------------------------------------------------------------- modules


class Projections:
    """Factory for every linear projection of the decoder blocks; subclass to swap layer types.

    kind in {"q","k","v","o","gate","up","down"}; axes are the kernel's logical (in, out) names.
    """

    def __call__(self, kind: str, layer: int, in_features: int, out_features: int, *, use_bias: bool,
                 axes: tuple[str, str], dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                          dot_general=matmul.dot_general,
                          kernel_init=nnx.initializers.normal(INIT_STD), rngs=rngs,
                          kernel_metadata=axes_meta(axes), bias_metadata=axes_meta(axes[1:]))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, dtype, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), **axes_meta(("embed",)))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (..., d): normalise in float32, cast back, then scale (transformers' order)."""
        h = x.astype(jnp.float32)
        h = h * lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * h.astype(x.dtype)


def project_alike(projections: Sequence[nnx.Module], x: jax.Array) -> list[jax.Array]:
    """[p(x) for p in projections] of one input. Projections of one class that offers `apply_shared`
    (the KAN projections: one basis expansion for all) go through it; a linear layer has no expansion to
    share, so it runs alone (why not fuse its kernels too: benchmarks/results/perf/kan_cost.md)."""
    kind = type(projections[0])
    shared = getattr(kind, "apply_shared", None)
    if shared is not None and all(type(p) is kind for p in projections):
        return shared(projections, x)
    return [p(x) for p in projections]


class LlamaAttention(nnx.Module):
    def __init__(self, config: LlamaConfig, layer: int, *, projections, dtype, param_dtype, rngs):
        d, e = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, e
        make = functools.partial(projections, layer=layer, use_bias=config.attention_bias, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        self.q_proj = make("q", in_features=d, out_features=self.num_heads * e, axes=("embed", "heads"))
        self.k_proj = make("k", in_features=d, out_features=self.num_kv_heads * e, axes=("embed", "kv"))
        self.v_proj = make("v", in_features=d, out_features=self.num_kv_heads * e, axes=("embed", "kv"))
        self.o_proj = make("o", in_features=self.num_heads * e, out_features=d, axes=("heads", "embed"))

    def __call__(self, x, cos, sin, mask, kv=None, offset=0, rows=None):
        """x (b,t,d); kv None or this layer's cache (k, v) each (b,s,k,e) -> (b,t,d), new kv or None.

        rows (b,r): only those query positions are computed (keys and values still cover all t)
        -> (b,r,d); a sequence classifier needs its last block only at the pooled token."""
        b, t, _ = x.shape
        xq, cq, sq, mq = x, cos, sin, mask
        if rows is not None:
            xq, cq, sq = take_rows(x, rows), take_rows(cos, rows), take_rows(sin, rows)
            mq = take_rows(jnp.broadcast_to(mask, (b,) + mask.shape[1:]), rows)
        if rows is None:
            q, k, v = project_alike((self.q_proj, self.k_proj, self.v_proj), x)
        else:
            q, (k, v) = self.q_proj(xq), project_alike((self.k_proj, self.v_proj), x)
        q = apply_rope(q.reshape(b, xq.shape[1], self.num_heads, self.head_dim), cq, sq)
        k = apply_rope(k.reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        if kv is not None:
            start = (0, offset, 0, 0)
            kv = tuple(lax.dynamic_update_slice(c, new.astype(c.dtype), start) for c, new in zip(kv, (k, v)))
            k, v = (c.astype(q.dtype) for c in kv)
        attend = attention if kv is not None or rows is not None else blocked_causal_attention
        return self.o_proj(attend(q, k, v, mq)), kv


class LlamaMLP(nnx.Module):
    def __init__(self, config: LlamaConfig, layer: int, *, projections, dtype, param_dtype, rngs):
        d, m = config.hidden_size, config.layer_intermediate_size(layer)
        make = functools.partial(projections, layer=layer, use_bias=config.mlp_bias, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = make("gate", in_features=d, out_features=m, axes=("embed", "mlp"))
        self.up_proj = make("up", in_features=d, out_features=m, axes=("embed", "mlp"))
        self.down_proj = make("down", in_features=m, out_features=d, axes=("mlp", "embed"))
        self.activation = config.layer_activation(layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(b,t,d) -> (b,t,d): down(act(gate(x)) * up(x)); act is SiLU or identity ("none")."""
        gate, up = project_alike((self.gate_proj, self.up_proj), x)
        if self.activation == "silu":
            gate = jax.nn.silu(gate)
        return self.down_proj(gate * up)


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, layer: int, *, projections, dtype, param_dtype, rngs):
        kw = dict(projections=projections, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn = LlamaAttention(config, layer, **kw)
        self.mlp = LlamaMLP(config, layer, **kw)
        norm = functools.partial(RMSNorm, config.hidden_size, eps=config.rms_norm_eps, dtype=dtype,
                                 param_dtype=param_dtype)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()

    def __call__(self, x, cos, sin, mask, kv=None, offset=0, rows=None):
        """x (b,t,d) -> (b,t,d), or (b,r,d) at the query positions `rows` (b,r) only."""
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, offset, rows)
        x = (x if rows is None else take_rows(x, rows)) + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def take_rows(a: jax.Array, rows: jax.Array) -> jax.Array:
    """a (b,t,...) at positions rows (b,r) -> (b,r,...)."""
    idx = rows.reshape(rows.shape + (1,) * (a.ndim - 2))
    return jnp.take_along_axis(a, idx, axis=1)


def _call_block(layer, x, cos, sin, mask, kv, offset, rows=None):
    return layer(x, cos, sin, mask, kv, offset, rows)


class LlamaModel(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 projections: Projections = Projections()):
        self.config, self.dtype = config, dtype
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      embedding_init=nnx.initializers.normal(INIT_STD), rngs=rngs,
                                      embedding_metadata=axes_meta(("vocab", "embed")))
        self.layers = nnx.List([
            LlamaDecoderLayer(config, i, projections=projections, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        # Rematerialise each block in the backward pass (activation memory ~ one block); set by
        # the trainer (train.remat), static in the graph definition.
        self.remat = False

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None,
                 cache: KVCache | None = None, last_rows: jax.Array | None = None):
        """input_ids (b,t) -> final-normed hidden (b,t,d), plus the new cache when one is given.

        attention_mask is (b,t) without a cache and (b,max_len) with one (1 = real token), or a (b,t,t)
        bool of the keys each query sees (with explicit positions; packed rows, kanjax.evals.packing).
        last_rows (b,r): the last block runs only at these positions -> (b,r,d); every earlier block
        still runs everywhere, since the last block's keys and values need all of them.
        """
        b, t = input_ids.shape
        offset = 0 if cache is None else cache.index
        s = t if cache is None else cache.k[0].shape[1]
        if cache is not None and segment_ids is not None:
            raise ValueError("segment_ids are not supported together with a KV cache")
        full_mask = attention_mask is not None and attention_mask.ndim == 3
        if attention_mask is not None and attention_mask.shape not in ((b, s), (b, t, s)):
            raise ValueError(f"attention_mask must be {(b, s)} (or {(b, t, s)}: which keys each query sees), "
                             f"got {attention_mask.shape}")
        if full_mask and positions is None:
            raise ValueError("a (b, t, s) attention_mask needs explicit positions")
        if positions is None:
            positions = default_positions(b, t, offset, attention_mask, segment_ids)
        mask = attention_mask_bool(t, s, offset, attention_mask, segment_ids)
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config), self.dtype)
        x = self.embed_tokens(input_ids)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            run = nnx.remat(_call_block) if self.remat and cache is None else _call_block
            rows = last_rows if i == len(self.layers) - 1 else None
            x, kv = run(layer, x, cos, sin, mask, None if cache is None else (cache.k[i], cache.v[i]), offset, rows)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        x = self.norm(x)
        return x if cache is None else (x, KVCache(tuple(new_k), tuple(new_v), cache.index + t))


class LlamaForCausalLM(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 projections: Projections = Projections()):
        self.config, self.dtype, self.param_dtype = config, dtype, param_dtype
        self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, projections=projections)
        self.lm_head = None if config.tie_word_embeddings else nnx.Linear(
            config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
            dot_general=matmul.dot_general,
            kernel_init=nnx.initializers.normal(INIT_STD), rngs=rngs,
            kernel_metadata=axes_meta(("embed", "vocab")))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """(b,t,d) -> (b,t,v) float32; tied models use the embedding matrix transposed."""
        out = self.model.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None,
                 cache: KVCache | None = None, logits_to_keep: int = 0):
        """-> logits (b,t,v) float32 [, new cache]. logits_to_keep > 0 keeps only the last that many steps
        (saves the (b,t,v) projection during prefill)."""
        out = self.model(input_ids, attention_mask, positions, segment_ids=segment_ids, cache=cache)
        hidden, new_cache = (out, None) if cache is None else out
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.logits(hidden)
        return logits if cache is None else (logits, new_cache)


def last_token_index(input_ids, attention_mask=None, pad_token_id=None) -> jax.Array:
    """(b,) index of the rightmost real token: from attention_mask, else from pad_token_id (as
    transformers), else the last position."""
    b, t = input_ids.shape
    if attention_mask is not None:
        real = attention_mask.astype(jnp.int32)
    elif pad_token_id is not None:
        real = (input_ids != pad_token_id).astype(jnp.int32)
    else:
        return jnp.full((b,), t - 1)
    return jnp.argmax(jnp.arange(t) * real, axis=-1)


class LlamaForSequenceClassification(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 projections: Projections = Projections()):
        self.config, self.dtype, self.param_dtype = config, dtype, param_dtype
        self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, projections=projections)
        self.score = nnx.Linear(config.hidden_size, config.num_labels, use_bias=False, dtype=dtype,
                                dot_general=matmul.dot_general,
                                param_dtype=param_dtype, kernel_init=nnx.initializers.normal(INIT_STD), rngs=rngs,
                                kernel_metadata=axes_meta(("embed", None)))

    def __call__(self, input_ids, attention_mask=None, positions=None, *, segment_ids=None) -> jax.Array:
        """-> (b, num_labels) float32 scores of the last real token of each row.

        Only that token's row goes through the last block (its keys and values excepted), the final
        norm and the head: the same scores for less work (a block fewer of every other token)."""
        idx = last_token_index(input_ids, attention_mask, self.config.pad_token_id)
        hidden = self.model(input_ids, attention_mask, positions, segment_ids=segment_ids, last_rows=idx[:, None])
        return self.score(hidden[:, 0]).astype(jnp.float32)


