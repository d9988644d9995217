"""kanjax.generate: KV-cache decoding vs full re-runs, vs transformers' generate, and the samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from kanjax.llama.attention import init_cache
from kanjax.llama.generate import chat_prompt, filter_logits, generate
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM

# Left padded prompts (pad id 0): rows of length 3, 6 and 4.
PROMPTS = np.array([[0, 0, 0, 5, 9, 33],
                    [7, 8, 41, 90, 3, 12],
                    [0, 0, 11, 54, 23, 6]], np.int32)
MASK = (PROMPTS != 0).astype(np.int32)
NO_EOS = []  # disables stopping


@pytest.fixture(scope="module")
def pair(llama_ref):
    """(transformers model, our model) with the same tiny random weights (untied head)."""
    hf = llama_ref.model(tie_word_embeddings=False, seed=3)
    return hf, llama_ref.ours(hf)


def test_cached_forward_matches_full_forward(pair):
    _, ours = pair
    ids = jnp.asarray(np.concatenate([PROMPTS, [[4, 8], [15, 16], [23, 42]]], 1))
    mask = jnp.asarray(np.concatenate([MASK, np.ones((3, 2), np.int32)], 1))
    full = ours(ids, mask)
    cache_mask = jnp.concatenate([mask, jnp.ones((3, 2), jnp.int32)], 1)  # cache longer than needed
    cache = init_cache(ours.config, 3, 10)
    prefill, cache = ours(ids[:, :6], cache_mask, cache=cache)
    step1, cache = ours(ids[:, 6:7], cache_mask, cache=cache)
    step2, cache = ours(ids[:, 7:8], cache_mask, cache=cache)
    assert int(cache.index) == 8 and cache.k[0].shape == (3, 10, 2, 16)
    got = jnp.concatenate([prefill, step1, step2], 1)
    real = np.asarray(mask, bool)
    assert np.max(np.abs(np.asarray(got - full))[real]) <= 1e-5


def test_greedy_cache_decoding_equals_full_reruns(pair):
    _, ours = pair
    got = np.asarray(generate(ours, PROMPTS, MASK, max_new_tokens=6, eos_token_id=NO_EOS))
    # Reference: no cache, the whole sequence again every step. A fixed (3, 12) buffer keeps shapes
    # static (fast eager dispatch); the not-yet-written tail cannot leak in through the causal mask.
    ids = jnp.asarray(np.pad(PROMPTS, ((0, 0), (0, 6))))
    mask = jnp.asarray(np.pad(MASK, ((0, 0), (0, 6)), constant_values=1))
    for t in range(6, 12):
        ids = ids.at[:, t].set(jnp.argmax(ours(ids, mask)[:, t - 1], -1))
    assert got.shape == (3, 6) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np.asarray(ids[:, 6:]))


def hf_greedy(hf, max_new_tokens, eos):
    with torch.no_grad():
        out = hf.generate(torch.tensor(PROMPTS, dtype=torch.long), attention_mask=torch.tensor(MASK),
                          max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[:, PROMPTS.shape[1]:].numpy()


def test_greedy_equals_transformers_generate(pair):
    hf, ours = pair
    free = hf_greedy(hf, 8, eos=None)
    if free.shape[1] == 8:  # nothing stopped it: compare all 8 tokens
        np.testing.assert_array_equal(generate(ours, PROMPTS, MASK, max_new_tokens=8, eos_token_id=NO_EOS), free)
    # Now make row 0's third token the EOS: row 0 stops there and pads, the others run on.
    eos = int(free[0, 2])
    ref = hf_greedy(hf, 8, eos=eos)
    got = np.asarray(generate(ours, PROMPTS, MASK, max_new_tokens=8, eos_token_id=eos, pad_token_id=0))
    np.testing.assert_array_equal(got[:, :ref.shape[1]], ref)
    assert (got[:, ref.shape[1]:] == 0).all()
    assert got[0, 2] == eos and (got[0, 3:] == 0).all()


def test_stops_early_when_all_rows_finish(pair):
    _, ours = pair
    first = np.asarray(generate(ours, PROMPTS[:1], MASK[:1], max_new_tokens=1, eos_token_id=NO_EOS))[0, 0]
    got = np.asarray(generate(ours, PROMPTS[:1], MASK[:1], max_new_tokens=5, eos_token_id=[int(first)],
                              pad_token_id=77))
    np.testing.assert_array_equal(got, [[first, 77, 77, 77, 77]])


def test_top_k_one_equals_greedy(pair):
    _, ours = pair
    greedy = generate(ours, PROMPTS, MASK, max_new_tokens=5, eos_token_id=NO_EOS)
    sampled = generate(ours, PROMPTS, MASK, max_new_tokens=5, eos_token_id=NO_EOS, temperature=0.7, top_k=1,
                       rng=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_is_valid_and_reproducible(pair):
    _, ours = pair
    kw = dict(max_new_tokens=8, eos_token_id=NO_EOS, temperature=1.5, top_p=0.9)
    a = np.asarray(generate(ours, PROMPTS, MASK, rng=jax.random.PRNGKey(1), **kw))
    b = np.asarray(generate(ours, PROMPTS, MASK, rng=jax.random.PRNGKey(1), **kw))
    c = np.asarray(generate(ours, PROMPTS, MASK, rng=jax.random.PRNGKey(2), **kw))
    assert a.shape == (3, 8) and ((a >= 0) & (a < ours.config.vocab_size)).all()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    d = np.asarray(generate(ours, PROMPTS, MASK, rng=7, max_new_tokens=4, temperature=0.8, top_k=5))
    assert ((d >= 0) & (d < ours.config.vocab_size)).all()


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.3), (None, 0.9), (7, 0.5)])
def test_filters_match_transformers_warpers(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    ref = torch.tensor(logits)
    if top_k is not None:
        ref = transformers.TopKLogitsWarper(top_k)(None, ref)
    if top_p is not None:
        ref = transformers.TopPLogitsWarper(top_p)(None, ref)
    got = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref.numpy()))
    np.testing.assert_array_equal(got[np.isfinite(got)], logits[np.isfinite(got)])


def test_chat_prompt_left_pads_template(tokenizer):
    ids, mask = chat_prompt(tokenizer, ["hi", "Write a haiku about the sea, please."])
    assert ids.shape == mask.shape and ids.dtype == np.int32
    assert (mask[1] == 1).all() and mask[0, 0] == 0 and (np.diff(mask, axis=1) >= 0).all()  # left padding
    for row, text in zip(range(2), ["hi", "Write a haiku about the sea, please."]):
        ref = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        assert ids[row][mask[row] == 1].tolist() == list(ref)
        assert (ids[row][mask[row] == 0] == tokenizer.pad_token_id).all()
    assert tokenizer.decode(ids[0, -4:]) == "<|im_start|>assistant\n"
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    one, one_mask = chat_prompt(tokenizer, conv)  # a single conversation
    assert one.shape[0] == 1 and one_mask.all() and "Be brief." in tokenizer.decode(one[0])


def test_generate_from_chat_prompt_with_real_tokenizer(tokenizer):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, pad_token_id=2)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids, mask = chat_prompt(tokenizer, ["hi", "what is 2+2?"])
    out = np.asarray(generate(model, ids, mask, max_new_tokens=3))
    assert out.shape == (2, 3) and ((out >= 0) & (out < 49152)).all()
