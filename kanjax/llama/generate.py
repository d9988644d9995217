"""Batched autoregressive generation (greedy / temperature / top-k / top-p) over the KV cache.

Shape letters: b batch, t prompt length, n max_new_tokens, v vocab.

Everything after the Python entry point is one jitted, functional program: the model is split
with ``nnx.split`` outside and merged inside, the prompt is prefilled into a static-shape cache of
length t + n, and a ``lax.while_loop`` runs one cached decode step per token until every row has
emitted EOS or n tokens exist. Prompts are LEFT padded, so every row's next token lands in the
same cache slot and one scalar write index serves the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from kanjax.llama.attention import KVCache, init_cache


class Sampler(NamedTuple):
    """Static sampling settings (hashable: part of the jit cache key). temperature 0 = greedy."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: float | None = None) -> jax.Array:
    """(b,v) float32 -> (b,v) with excluded tokens at -inf (same rules as transformers' warpers).

    top_k keeps the k largest (ties with the k-th kept too). top_p keeps the smallest set of most
    likely tokens whose mass reaches top_p: a token stays iff the mass strictly above it is < top_p.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(desc, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # always true for the most likely token
        threshold = jnp.take_along_axis(desc, keep.sum(-1, keepdims=True) - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_logits(logits: jax.Array, rng: jax.Array, sampler: Sampler) -> jax.Array:
    """(b,v) float32 next-token logits -> (b,) int32 token ids."""
    if sampler.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / sampler.temperature, sampler.top_k, sampler.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def forward_step(model, tokens: jax.Array, attention_mask: jax.Array, cache: KVCache):
    """tokens (b,t) written at cache.index -> last-step logits (b,v) float32, new cache."""
    logits, cache = model(tokens, attention_mask, cache=cache, logits_to_keep=1)
    return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampler", "cache_dtype"))
def _generate(graphdef, state, input_ids, attention_mask, rng, eos_ids, pad_id, *,
              max_new_tokens: int, sampler: Sampler, cache_dtype):
    model = nnx.merge(graphdef, state)
    b, t = input_ids.shape
    cache = init_cache(model.config, b, t + max_new_tokens, cache_dtype)
    # Future slots are marked valid up front: causality alone hides them until they are written.
    mask = jnp.concatenate([attention_mask, jnp.ones((b, max_new_tokens), attention_mask.dtype)], axis=1)
    logits, cache = forward_step(model, input_ids, mask, cache)  # prefill
    rng, key = jax.random.split(rng)
    token = sample_logits(logits, key, sampler)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos_ids)

    def keep_going(carry):
        step, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode(carry):
        step, token, cache, rng, done, out = carry
        logits, cache = forward_step(model, token[:, None], mask, cache)
        rng, key = jax.random.split(rng)
        token = jnp.where(done, pad_id, sample_logits(logits, key, sampler))  # finished rows emit padding
        out = lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, rng, done | jnp.isin(token, eos_ids), out

    carry = (jnp.ones((), jnp.int32), token, cache, rng, done, out)
    return lax.while_loop(keep_going, decode, carry)[-1]


def _as_key(rng) -> jax.Array:
    if rng is None:
        return jax.random.PRNGKey(0)
    if isinstance(rng, (int, np.integer)):
        return jax.random.PRNGKey(int(rng))
    return rng


def generate(model, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, rng=None) -> jax.Array:
    """Continue LEFT-padded prompts. input_ids, attention_mask (b,t) -> new tokens (b, max_new_tokens) int32.

    temperature 0 is greedy (top_k / top_p ignored). eos_token_id defaults to the model config's;
    after a row emits EOS the rest of it is pad_token_id (default: config pad, else first EOS, else 0)
    and decoding stops once every row is finished. rng: PRNG key or int seed (default seed 0), so
    equal rngs give equal samples.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg = model.config
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = (jnp.ones_like(input_ids) if attention_mask is None
                      else jnp.asarray(attention_mask, jnp.int32))
    if eos_token_id is None:
        eos = cfg.eos_token_ids
    else:
        eos = tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else (int(eos_token_id),)
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    sampler = Sampler(float(temperature), None if top_k is None else int(top_k),
                      None if top_p is None else float(top_p))
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, input_ids, attention_mask, _as_key(rng),
                     jnp.asarray(eos or (-1,), jnp.int32), jnp.int32(pad_token_id),
                     max_new_tokens=int(max_new_tokens), sampler=sampler,
                     cache_dtype=getattr(model, "dtype", jnp.float32))


def chat_prompt(tokenizer, messages_or_texts, *, add_generation_prompt: bool = True,
                pad_token_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render prompts with the tokenizer's chat template; LEFT pad -> input_ids, attention_mask (b,t) int32.

    Accepts a str, a list of str (each one user turn), one conversation (list of {"role","content"}
    dicts) or a list of conversations. The template already writes every special token, so the
    rendered text is tokenised without adding more.
    """
    items = [messages_or_texts] if isinstance(messages_or_texts, str) else list(messages_or_texts)
    if items and isinstance(items[0], dict):
        items = [items]
    convs = [[{"role": "user", "content": c}] if isinstance(c, str) else list(c) for c in items]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=add_generation_prompt)
             for c in convs]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    if pad_token_id is None:
        pad_token_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


__all__ = ["Sampler", "filter_logits", "sample_logits", "forward_step", "generate", "chat_prompt"]
