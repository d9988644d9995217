"""Attention maths of the Llama decoder: RoPE, position ids, masks, grouped-query attention and the
functional KV cache. Pure functions of arrays (and of a config's head_dim / rope fields), no
parameters: `kanjax.llama` builds its modules on them.

Shape letters: b batch, t query time, s key time (cache length when decoding), h query heads,
k kv heads, g = h // k, e head dim.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ----------------------------------------------------------------------------- rope


@functools.lru_cache(maxsize=64)
def rope_inv_freq(config) -> np.ndarray:
    """(e/2,) float32 inverse frequencies, computed in float32 like transformers."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2).astype(np.float32) / dim))
    inv = inv.astype(np.float32)
    if config.rope_scaling is None:
        return inv
    s = config.rope_scaling  # llama3: keep high freqs, divide low freqs by factor, blend in between
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / lo, old_len / hi
    wavelen = (2 * math.pi / inv).astype(np.float32)
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """positions (b, t) -> cos, sin (b, t, 1, e) in ``dtype`` (rotate-half layout: halves repeat)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (b, t, heads, e) rotated by position; rotate_half pairs dim i with i + e/2."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# ----------------------------------------------------------------------------- masks & positions


def default_positions(batch: int, t: int, offset, attention_mask=None, segment_ids=None) -> jax.Array:
    """(b, t) int32 positions when the caller gives none.

    segment_ids: restart at 0 at every segment boundary (packed rows). attention_mask (b, s):
    cumsum(mask) - 1 clipped at 0 (left padding as HF generate), read at slots offset..offset+t.
    Otherwise offset + arange(t).
    """
    if segment_ids is not None:
        idx = jnp.broadcast_to(jnp.arange(t), (batch, t))
        starts = jnp.concatenate([jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
        return (idx - lax.cummax(jnp.where(starts, idx, 0), axis=1)).astype(jnp.int32)
    if attention_mask is not None:
        pos = jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
        return lax.dynamic_slice_in_dim(pos, offset, t, axis=1).astype(jnp.int32)
    return jnp.broadcast_to(offset + jnp.arange(t, dtype=jnp.int32), (batch, t))


def attention_mask_bool(t: int, s: int, offset, attention_mask=None, segment_ids=None) -> jax.Array:
    """(b|1, t, s) bool: query at slot offset+i sees key slot j iff j <= offset+i, key valid, same segment.

    attention_mask (b, s) marks valid keys; a (b, t, s) one says directly which keys each query sees
    (e.g. continuations packed after a shared context, kanjax.evals.packing), still ANDed with causality."""
    q_slot = offset + jnp.arange(t)
    mask = (jnp.arange(s)[None, :] <= q_slot[:, None])[None]
    if attention_mask is not None and attention_mask.ndim == 3:
        mask = mask & attention_mask.astype(bool)
    elif attention_mask is not None:
        mask = mask & attention_mask.astype(bool)[:, None, :]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return mask


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q (b,t,h,e), k/v (b,s,k,e), mask (b|1,t,s) -> (b,t,h*e).

    Query head i uses kv head i // g (transformers' repeat_kv order). Scores and softmax in
    float32; fully masked rows (padding queries) get a uniform distribution, not NaN.
    """
    b, t, h, e = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, h // kh, e)
    scores = jnp.einsum("btkge,bske->bkgts", q, k, preferred_element_type=jnp.float32) * (e ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bske->btkge", probs, v).reshape(b, t, h * e)


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                             block: int = 64, max_blocks: int = 16) -> jax.Array:
    """`attention` for the no-cache case (queries and keys at the same causal positions, t == s).

    Query block i only meets keys [0, (i+1)·block): the blocks above the diagonal are all masked
    anyway, so skipping them halves the score work, and the smaller score matrices stay in cache
    (benchmarks/results/perf/model_forward.md). The blocks are unrolled (each has its own key
    length), so past max_blocks·block tokens the block grows (a multiple of `block`) to keep at most
    max_blocks of them: 8,192-token rows (perplexity windows) would otherwise unroll 128 per layer,
    and the compilation takes minutes; 16 blocks still skip 47% of the score work.
    """
    b, t, h, e = q.shape
    s, kh = k.shape[1], k.shape[2]
    block = max(block, -(-t // (max_blocks * block)) * block)
    if t != s or t <= block:
        return attention(q, k, v, mask)
    g = h // kh
    kk, vv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (b,k,s,e)
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        n = stop - start
        qb = q[:, start:stop].reshape(b, n, kh, g, e).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * n, e)
        scores = jnp.einsum("bkqe,bkse->bkqs", qb, kk[:, :, :stop], preferred_element_type=jnp.float32)
        scores = (scores * (e ** -0.5)).reshape(b, kh, g, n, stop)
        scores = jnp.where(mask[:, None, None, start:stop, :stop], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kh, g * n, stop)
        out = jnp.einsum("bkqs,bkse->bkqe", probs, vv[:, :, :stop])
        outs.append(out.reshape(b, kh, g, n, e).transpose(0, 3, 1, 2, 4).reshape(b, n, h * e))
    return jnp.concatenate(outs, axis=1)


# ----------------------------------------------------------------------------- kv cache


class KVCache(NamedTuple):
    """Functional decoding cache (a pytree). k[i], v[i]: layer i's (b, max_len, k, e) rotated keys
    and values by cache slot; index: () int32, next slot to write (= tokens written so far).

    Writing past max_len is not detected under jit (dynamic_update_slice clamps the start), so size
    the cache as prompt length + new tokens. Left-padded batches share one index; padding slots
    are hidden by the (b, max_len) attention_mask passed with every call."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    index: jax.Array


def init_cache(config, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, max_len, config.num_key_value_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_hidden_layers))
    return KVCache(zeros, zeros, jnp.zeros((), jnp.int32))
