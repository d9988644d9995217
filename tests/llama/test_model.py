"""kanjax.llama against transformers' Llama (tiny random float32 models, eager attention)."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from kanjax.llama.attention import rope_inv_freq
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, Projections
from kanjax.llama.surgery import trim_vocab, truncate_layers

TOL = 1e-4

# Row 0 left padded, row 1 right padded, row 2 full; pad id 0 never occurs as a real token.
IDS = np.array([[0, 0, 0, 5, 9, 33, 17, 4, 60, 71],
                [7, 8, 41, 90, 3, 12, 0, 0, 0, 0],
                [11, 54, 23, 6, 95, 30, 19, 42, 2, 77]], np.int64)
MASK = (IDS != 0).astype(np.int64)


def hf_positions(mask):
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def hf_logits(hf, ids=IDS, mask=MASK):
    with torch.no_grad():
        kw = {} if mask is None else dict(attention_mask=torch.tensor(mask),
                                          position_ids=torch.tensor(hf_positions(mask)))
        return hf(torch.tensor(ids), **kw).logits.numpy()


def max_err_on_real(ours, ref, mask=MASK):
    return float(np.max(np.abs(np.asarray(ours) - ref)[mask.astype(bool)]))


@pytest.mark.parametrize("tied", [True, False])
def test_causal_lm_matches_transformers(llama_ref, tied):
    hf = llama_ref.model(tie_word_embeddings=tied)
    ours = llama_ref.ours(hf)
    assert (ours.lm_head is None) == tied
    logits = ours(jnp.asarray(IDS), jnp.asarray(MASK))
    assert logits.shape == (3, 10, 96) and logits.dtype == jnp.float32
    assert max_err_on_real(logits, hf_logits(hf)) <= TOL


def test_sequence_classification_matches_transformers(llama_ref):
    hf = llama_ref.model("LlamaForSequenceClassification", num_labels=3)
    ours = llama_ref.ours(hf)
    with torch.no_grad():
        ref_masked = hf(torch.tensor(IDS), attention_mask=torch.tensor(MASK),
                        position_ids=torch.tensor(hf_positions(MASK))).logits.numpy()
        ref_plain = hf(torch.tensor(IDS)).logits.numpy()  # HF finds the last token from pad_token_id
    got_masked = ours(jnp.asarray(IDS), jnp.asarray(MASK))
    got_plain = ours(jnp.asarray(IDS))
    assert got_masked.shape == (3, 3)
    np.testing.assert_allclose(got_masked, ref_masked, atol=TOL, rtol=0)
    np.testing.assert_allclose(got_plain, ref_plain, atol=TOL, rtol=0)


def test_llama3_rope_scaling_matches_transformers(llama_ref):
    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # short context: all three frequency bands occur
    hf = llama_ref.model(rope_scaling=scaling, tie_word_embeddings=False)
    ours = llama_ref.ours(hf)
    assert ours.config.rope_scaling["rope_type"] == "llama3"
    ref_inv = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf.config).inv_freq.numpy()
    np.testing.assert_allclose(rope_inv_freq(ours.config), ref_inv, rtol=1e-6)
    assert not np.allclose(rope_inv_freq(dataclasses.replace(ours.config, rope_scaling=None)), ref_inv)
    assert max_err_on_real(ours(jnp.asarray(IDS), jnp.asarray(MASK)), hf_logits(hf)) <= TOL


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="yarn"):
        LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="dynamic"):
        LlamaConfig.from_hf({"rope_scaling": {"type": "dynamic", "factor": 2.0}})
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaConfig.from_hf({"hidden_act": "gelu"})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlamaConfig(num_key_value_heads=2)
    with pytest.raises(ValueError, match="intermediate_sizes"):
        LlamaConfig(num_hidden_layers=2, intermediate_sizes=(8,))
    with pytest.raises(ValueError, match="mlp_activations"):
        LlamaConfig(num_hidden_layers=1, mlp_activations=("gelu",))


def test_config_hf_round_trip(shared_data):
    smol = json.loads((shared_data / "smollm2_tokenizer" / "config.json").read_text())
    cfg = LlamaConfig.from_hf(shared_data / "smollm2_tokenizer" / "config.json")
    assert cfg == dataclasses.replace(LlamaConfig(), pad_token_id=2) and cfg.head_dim == 64
    assert LlamaConfig.from_hf(smol) == cfg
    custom = LlamaConfig(num_hidden_layers=2, eos_token_id=[2, 0], num_labels=3, intermediate_sizes=[64, 128],
                         mlp_activations=["silu", "none"],
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 512})
    for c in (cfg, custom):
        d = c.to_hf()
        assert d["model_type"] == "llama" and d["hidden_act"] == "silu" and d["architectures"]
        json.dumps(d)
        assert LlamaConfig.from_hf(d) == c
        hf_cfg = transformers.LlamaConfig(**d)  # transformers accepts it ...
        assert LlamaConfig.from_hf(hf_cfg.to_dict()) == c  # ... and its own dump reads back the same
    assert hash(custom) == hash(LlamaConfig.from_hf(custom.to_hf()))


def test_packed_segments_equal_separate_sequences(llama_ref):
    ours = llama_ref.ours(llama_ref.model())
    a, b = np.array([[5, 9, 33, 17, 4]]), np.array([[60, 71, 8, 41]])
    packed = jnp.asarray(np.concatenate([a, b], 1))
    segments = jnp.asarray([[1] * 5 + [2] * 4])
    got = ours(packed, segment_ids=segments)  # positions restart per segment by default
    explicit = ours(packed, positions=jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 3]]), segment_ids=segments)
    alone = np.concatenate([ours(jnp.asarray(a)), ours(jnp.asarray(b))], 1)
    np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(explicit, alone, atol=1e-5, rtol=0)


def test_truncate_layers_matches_shallower_transformers(llama_ref):
    hf = llama_ref.model(num_hidden_layers=3, tie_word_embeddings=False)
    ours = llama_ref.ours(hf)
    short = truncate_layers(ours, 2)
    assert type(short) is LlamaForCausalLM and short.config.num_hidden_layers == 2 and len(short.model.layers) == 2
    assert len(ours.model.layers) == 3  # the original is untouched
    hf_short = transformers.LlamaForCausalLM(llama_ref.config(num_hidden_layers=2, tie_word_embeddings=False))
    missing, _ = hf_short.load_state_dict(hf.state_dict(), strict=False)
    assert not missing
    assert max_err_on_real(short(jnp.asarray(IDS), jnp.asarray(MASK)), hf_logits(hf_short.eval())) <= TOL


@pytest.mark.parametrize("tied", [True, False])
def test_trim_vocab_restricts_logits(tokenizer, tied):
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=tied, pad_token_id=2)
    full = LlamaForCausalLM(cfg, rngs=nnx.Rngs(1))
    texts = ["The cat sat on the mat.", "The dog sat on the log, and the cat ran away!"]
    trimmed, id_map, new_to_old = trim_vocab(full, tokenizer, texts, 8, return_inverse=True)
    n_new = trimmed.config.vocab_size
    assert type(trimmed) is LlamaForCausalLM and n_new == 17 + 8 and full.config.vocab_size == 49152
    assert id_map.dtype == np.int32 and id_map.shape == (49152,) and new_to_old.shape == (n_new,)
    assert (id_map[:17] == np.arange(17)).all()  # specials (all at the start for SmolLM2) keep their ids
    assert (id_map[new_to_old] == np.arange(n_new)).all()
    the = tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    assert the in new_to_old  # the most frequent word survives
    dropped = np.setdiff1d(np.arange(49152), new_to_old)
    assert (id_map[dropped] == id_map[tokenizer.unk_token_id]).all()  # documented reserved id
    assert trimmed.config.eos_token_id == 2 and trimmed.config.pad_token_id == 2
    assert trimmed.model.embed_tokens.embedding.shape == (n_new, 32)
    if not tied:
        assert trimmed.lm_head.kernel.shape == (32, n_new)
    old_ids = np.random.default_rng(0).choice(new_to_old, size=(2, 7))
    got = trimmed(jnp.asarray(id_map[old_ids]))
    ref = np.asarray(full(jnp.asarray(old_ids)))[..., new_to_old]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    _, id_map_only = trim_vocab(full, tokenizer, texts, 8)
    np.testing.assert_array_equal(id_map_only, id_map)
    from collections import Counter

    counts = Counter(i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"])
    _, id_map_counts = trim_vocab(full, tokenizer, None, 8, counts=counts)  # the cached path
    np.testing.assert_array_equal(id_map_counts, id_map)


def _spec(state, *path):
    for p in path:
        state = state[p]
    return tuple(state.get_metadata()["out_sharding"])


def test_logical_axes_on_every_parameter():
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                      attention_bias=True, mlp_bias=True)
    for model in (LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), LlamaForSequenceClassification(cfg, rngs=nnx.Rngs(0))):
        params = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert all(len(p.get_metadata().get("out_sharding") or ()) == p[...].ndim for p in params)
        specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))  # what sharding code will read
        assert all(len(s.get_value()) == p[...].ndim for s, p in zip(
            jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, nnx.Variable)), params))
    s = nnx.state(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    layer = ("model", "layers", 0)
    assert _spec(s, "model", "embed_tokens", "embedding") == ("vocab", "embed")
    assert _spec(s, *layer, "self_attn", "q_proj", "kernel") == ("embed", "heads")
    assert _spec(s, *layer, "self_attn", "q_proj", "bias") == ("heads",)
    assert _spec(s, *layer, "self_attn", "k_proj", "kernel") == ("embed", "kv")
    assert _spec(s, *layer, "self_attn", "v_proj", "kernel") == ("embed", "kv")
    assert _spec(s, *layer, "self_attn", "o_proj", "kernel") == ("heads", "embed")
    assert _spec(s, *layer, "mlp", "gate_proj", "kernel") == ("embed", "mlp")
    assert _spec(s, *layer, "mlp", "up_proj", "kernel") == ("embed", "mlp")
    assert _spec(s, *layer, "mlp", "down_proj", "kernel") == ("mlp", "embed")
    assert _spec(s, *layer, "input_layernorm", "weight") == ("embed",)
    assert _spec(s, "model", "norm", "weight") == ("embed",)
    assert _spec(s, "lm_head", "kernel") == ("embed", "vocab")
    score = nnx.state(LlamaForSequenceClassification(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    assert _spec(score, "score", "kernel") == ("embed", None)


class RecordingProjections(Projections):
    """Swaps every "up" projection for a biased Linear and records what was asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, kind, layer, in_features, out_features, *, use_bias, axes, dtype, param_dtype, rngs):
        self.calls.append((kind, layer, in_features, out_features, axes))
        if kind == "up":
            return nnx.Linear(in_features, out_features, use_bias=True, rngs=rngs)
        return super().__call__(kind, layer, in_features, out_features, use_bias=use_bias, axes=axes,
                                dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def test_projection_factory_and_per_layer_mlp():
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, intermediate_sizes=(8, 40),
                      mlp_activations=("silu", "none"))
    proj = RecordingProjections()
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0), projections=proj)
    assert sorted({(k, l) for k, l, *_ in proj.calls}) == sorted(
        (k, l) for k in ("q", "k", "v", "o", "gate", "up", "down") for l in (0, 1))
    assert ("down", 1, 40, 16, ("mlp", "embed")) in proj.calls
    assert model.model.layers[0].mlp.up_proj.bias is not None
    assert model.model.layers[1].mlp.gate_proj.kernel.shape == (16, 40)
    assert model(jnp.ones((1, 3), jnp.int32)).shape == (1, 3, 32)
    mlp = model.model.layers[1].mlp  # "none": plain GLU, gate(x) * up(x)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 16))
    np.testing.assert_allclose(mlp(x), mlp.down_proj(mlp.gate_proj(x) * mlp.up_proj(x)), atol=1e-6)


def test_bfloat16_compute_keeps_float32_logits(llama_ref):
    hf = llama_ref.model()
    cfg = LlamaConfig.from_hf(hf.config.to_dict())
    ours = llama_ref.copy(LlamaForCausalLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), hf)
    logits = ours(jnp.asarray(IDS), jnp.asarray(MASK))
    assert logits.dtype == jnp.float32
    assert max_err_on_real(logits, hf_logits(hf)) < 0.1  # bf16 activations: loose
    half = LlamaForCausalLM(cfg, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half.model.layers[0].mlp.up_proj.kernel.dtype == jnp.bfloat16


def test_blocked_causal_attention_equals_dense():
    """The no-cache attention skips blocks above the diagonal; it must not change the result,
    including rows of left padding and lengths that are not a multiple of the block."""
    import jax

    from kanjax.llama.attention import attention, attention_mask_bool, blocked_causal_attention

    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    b, t, h, kh, e = 2, 150, 6, 2, 8
    q = jax.random.normal(kq, (b, t, h, e))
    k = jax.random.normal(kk, (b, t, kh, e))
    v = jax.random.normal(kv, (b, t, kh, e))
    pad = jnp.ones((b, t), jnp.int32).at[1, :37].set(0)
    mask = attention_mask_bool(t, t, 0, pad)
    real = np.asarray(pad, bool)  # fully masked (padding) query rows are arbitrary in both
    dense = np.asarray(attention(q, k, v, mask))[real]
    np.testing.assert_allclose(np.asarray(blocked_causal_attention(q, k, v, mask, block=64))[real], dense,
                               atol=1e-5, rtol=1e-5)
    # Past max_blocks·block tokens the block grows: 150 tokens in at most 4 blocks of 16·k → 4 of 48.
    capped = functools.partial(blocked_causal_attention, block=16, max_blocks=4)
    np.testing.assert_allclose(np.asarray(capped(q, k, v, mask))[real], dense, atol=1e-5, rtol=1e-5)
    dots = [e for e in jax.make_jaxpr(capped)(q, k, v, mask).eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 2 * 4  # scores and values per block
