"""kanify: KAN layers in any projection, every strategy, parameter matching, exact conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan import basis as basis_lib
from kanjax.kan.layer import KANLinear, count_params
from kanjax.llama.kan_spec import KANSpec
from kanjax.llama.kanify import KANProjection, build_model, kanify, param_report
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)
IDS = jnp.array([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
MASK = (IDS != 0).astype(jnp.int32)


@pytest.fixture(scope="module")
def tiny_lm():
    return LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))


def _kan_layers(model):
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, KANLinear)]


@pytest.mark.parametrize("strategy", ["replace", "parallel", "sequential"])
@pytest.mark.parametrize("targets", ["attn", "mlp", "all"])
def test_every_strategy_and_target_trains(tiny_lm, strategy, targets):
    model = kanify(tiny_lm, dict(targets=[targets], strategy=strategy, base="silu"))
    assert model(IDS, MASK).shape == tiny_lm(IDS, MASK).shape == (2, 6, TINY.vocab_size)
    expected = {"attn": 4, "mlp": 3, "all": 7}[targets] * TINY.num_hidden_layers
    assert len(_kan_layers(model)) == expected
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(IDS, MASK)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grads = nnx.state(nnx.merge(graphdef, jax.grad(loss)(state)), KANLinear)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        # every coefficient, not just every tensor: a dead basis column would show up here
        if "coef" in jax.tree_util.keystr(path):
            assert np.all(np.any(g != 0, axis=-1)), f"zero gradient rows in {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("strategy", ["replace", "parallel", "sequential"])
@pytest.mark.parametrize("init", ["random"])  # from_linear + width is refused by name
def test_param_matched_strategies_build_on_a_concrete_model(tiny_lm, strategy, init):
    """Parameter matching gives attention a rank bottleneck: the linear branch of parallel /
    sequential is then (in, r), which the pretrained (in, out) kernel must not be copied into."""
    model = kanify(tiny_lm, dict(targets=["all"], strategy=strategy, param_match="width", init=init))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, KANProjection) and q.proj is not None
    assert np.all(np.isfinite(np.asarray(model(IDS, MASK))))
    assert abs(count_params(model) / count_params(tiny_lm) - 1) < 0.05


@pytest.mark.parametrize("strategy", ["replace", "parallel", "sequential"])
@pytest.mark.parametrize("family", ["chebyshev2", "legendre", "jacobi", "hermite"])
def test_from_linear_keeps_the_function(tiny_lm, strategy, family):
    spec = dict(targets=["all"], strategy=strategy, basis=family, init="from_linear", domain="none")
    model = kanify(tiny_lm, spec)
    np.testing.assert_allclose(model(IDS, MASK), tiny_lm(IDS, MASK), atol=1e-5)


def test_layer_selection_and_no_silu(tiny_lm):
    model = kanify(tiny_lm, dict(targets=["mlp"], layers="last:1", mlp_activation="none"))
    kinds = [type(b.mlp.up_proj) for b in model.model.layers]
    assert kinds == [nnx.Linear, nnx.Linear, KANProjection]
    assert model.config.mlp_activations == ("silu", "silu", "none")
    assert [b.mlp.activation for b in model.model.layers] == ["silu", "silu", "none"]
    model = kanify(tiny_lm, dict(targets=["q", "down"], layers=[0, -1]))
    assert [type(b.self_attn.q_proj) for b in model.model.layers] == [KANProjection, nnx.Linear, KANProjection]
    assert all(type(b.self_attn.k_proj) is nnx.Linear for b in model.model.layers)
    # untouched parameters are copied from the source model
    np.testing.assert_array_equal(model.model.layers[1].mlp.up_proj.kernel[...],
                                  tiny_lm.model.layers[1].mlp.up_proj.kernel[...])


def test_no_targets_is_the_linear_model(tiny_lm):
    model = kanify(tiny_lm, {})
    np.testing.assert_array_equal(model(IDS, MASK), tiny_lm(IDS, MASK))
    assert count_params(model) == count_params(tiny_lm)


def test_classifier_can_be_kanified():
    clf = LlamaForSequenceClassification(TINY, rngs=nnx.Rngs(1))
    model = kanify(clf, dict(targets=["all"], init="from_linear", domain="none"))
    np.testing.assert_allclose(model(IDS, MASK), clf(IDS, MASK), atol=1e-5)
    assert model(IDS, MASK).shape == (2, 3)


def _abstract_params(config, spec) -> int:
    return count_params(build_model(LlamaForCausalLM, config, spec, abstract=True))


SMOLLM2 = LlamaConfig()  # SmolLM2-135M
# Parameter matching is per projection, so every block of SmolLM2's shape matches alike: one block
# tells it (0.3 s a family instead of 5 s for all 30); test_whole_smollm2_is_embedding_plus_30_blocks
# ties it to the full model.
ONE_BLOCK = LlamaConfig(num_hidden_layers=1)


@pytest.fixture(scope="module")
def linear_smollm2_parts() -> dict:
    """{embed: embedding + final norm, block: one decoder block} parameter counts of linear SmolLM2."""
    one, two = _abstract_params(ONE_BLOCK, None), _abstract_params(LlamaConfig(num_hidden_layers=2), None)
    return {"block": two - one, "embed": 2 * one - two}


@pytest.mark.parametrize("family,params", [(f, {}) for f in sorted(basis_lib.BASES)]
                         + [("bspline", {"grid": 5, "order": 3})])
@pytest.mark.parametrize("targets", ["mlp", "all"])
def test_param_match_hits_linear_count_on_smollm2_shape(family, params, targets, linear_smollm2_parts):
    """A param-matched block of SmolLM2's shape within 1% of the linear block (the embedding excluded:
    it would dilute the error by a fifth)."""
    spec = dict(targets=[targets], basis=family, degree=2, basis_params=params, param_match="width")
    kan_block = _abstract_params(ONE_BLOCK, spec) - linear_smollm2_parts["embed"]
    linear_block = linear_smollm2_parts["block"]
    assert abs(kan_block - linear_block) / linear_block <= 0.01, (family, kan_block, linear_block)


def test_whole_smollm2_is_embedding_plus_30_blocks(linear_smollm2_parts):
    parts = linear_smollm2_parts
    assert _abstract_params(SMOLLM2, None) == 134_515_008 == parts["embed"] + SMOLLM2.num_hidden_layers * parts["block"]  # tied
    spec = dict(targets=["all"], basis="chebyshev2", degree=2, param_match="width")
    kan_block = _abstract_params(ONE_BLOCK, spec) - parts["embed"]
    kan = _abstract_params(SMOLLM2, spec)
    assert kan == parts["embed"] + SMOLLM2.num_hidden_layers * kan_block and abs(kan - 134_515_008) / 134_515_008 <= 0.01


def test_param_report_totals(tiny_lm):
    model = kanify(tiny_lm, dict(targets=["mlp"], param_match="width"))
    report = param_report(model)
    total_row = report.splitlines()[-1]
    assert f"{count_params(model):,}" in total_row and f"{count_params(tiny_lm):,}" in total_row
    assert "| up |" in report and "| embed_tokens |" in report


@pytest.mark.parametrize("strategy", ["replace", "parallel", "sequential"])
@pytest.mark.parametrize("bottleneck_init,lo,hi", [("output", 0.7, 1.5), ("layerwise", 0.0, 0.45)])
def test_bottlenecked_projection_starts_at_the_linear_layers_output_scale(strategy, bottleneck_init, lo, hi):
    """A parameter-matched attention projection (KAN in → r, linear r → out) at init: with
    bottleneck_init="output" its output std for unit inputs is the replaced linear layer's,
    0.02·sqrt(in); "layerwise" (every stage at the 0.02 scale) shrinks it by another 0.02·sqrt(r)."""
    from kanjax.llama.kanify import matched_rank

    n_in, n_out = 576, 576
    spec = KANSpec(targets=("q",), strategy=strategy, param_match="width", bottleneck_init=bottleneck_init)
    rank = matched_rank(spec, n_in, n_out, False)
    proj = KANProjection(n_in, n_out, strategy=strategy, spec=spec, rank=rank, use_bias=False,
                         axes=(None, None), dtype=None, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1024, n_in))
    ratio = float(jnp.std(proj(x))) / (0.02 * np.sqrt(n_in))
    assert lo <= ratio <= hi, (strategy, bottleneck_init, rank, ratio)


def test_param_ratio_halves_the_projection_parameters():
    full = build_model(LlamaForSequenceClassification, TINY, dict(targets=["all"], param_match="width"),
                       abstract=True)
    half = build_model(LlamaForSequenceClassification, TINY,
                       dict(targets=["all"], param_match="width", param_ratio=0.5), abstract=True)
    lin = build_model(LlamaForSequenceClassification, TINY, None, abstract=True)
    emb = TINY.vocab_size * TINY.hidden_size + TINY.hidden_size * TINY.num_labels  # embedding and head stay
    ratio = (count_params(half) - emb) / (count_params(lin) - emb)
    assert 0.45 <= ratio <= 0.56, ratio
    assert abs(count_params(full) - count_params(lin)) / count_params(lin) < 0.02
    with pytest.raises(ValueError, match="param_ratio"):
        KANSpec(targets=("all",), param_ratio=1.5)


@pytest.mark.slow
def test_from_linear_on_real_smollm2_keeps_logits_and_answer(smollm2_gguf, tokenizer, record_property):
    from kanjax.hf.pretrained import load_gguf
    from kanjax.llama.generate import chat_prompt, generate

    model = load_gguf(smollm2_gguf)
    questions = ["What is the capital of France?", "Name a primary colour."]
    ids, mask = chat_prompt(tokenizer, questions)
    ref = np.asarray(model(ids, mask))
    real = np.asarray(mask, bool)
    kan = kanify(model, dict(targets=["all"], basis="chebyshev2", init="from_linear", domain="none"))
    assert np.max(np.abs(np.asarray(kan(ids, mask)) - ref)[real]) <= 1e-3
    answer = generate(model, ids[:1], mask[:1], max_new_tokens=16)
    kan_answer = generate(kan, ids[:1], mask[:1], max_new_tokens=16)
    np.testing.assert_array_equal(np.asarray(kan_answer), np.asarray(answer))
    assert "Paris" in tokenizer.decode(np.asarray(kan_answer[0]), skip_special_tokens=True)
    # tanh squashes activations before the basis, so the converted map is squash(x) @ W: recorded.
    for strategy, targets in (("replace", "mlp"), ("sequential", "mlp")):
        drift_model = kanify(model, dict(targets=[targets], strategy=strategy, layers="last:5",
                                         basis="chebyshev2", init="from_linear", domain="tanh"))
        drift = float(np.max(np.abs(np.asarray(drift_model(ids, mask)) - ref)[real]))
        record_property(f"tanh_drift_{strategy}_{targets}_last5", drift)
        print(f"tanh-domain from_linear drift ({strategy}, {targets}, last 5 blocks): max |Δlogit| = {drift:.3f}")


@pytest.mark.parametrize("spec", [
    dict(basis="chebyshev2", degree=2), dict(basis="bspline"), dict(basis="rbf"),
    dict(basis="chebyshev2", degree=2, base="linear"),
    dict(basis="group_rational", degree=5, den_degree=4, num_groups=4, domain="none")])
def test_matched_width_is_the_brute_force_closest(spec):
    """The width solver (affine shortcut) against a scan of every width: the smallest |count − target|,
    the smaller width on ties."""
    import importlib

    kanify_lib = importlib.import_module("kanjax.llama.kanify")  # the module (kanjax.llama.kanify is the function)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    s = KANSpec(targets=("mlp",), param_match="width", **spec)
    d, m = cfg.hidden_size, cfg.intermediate_size
    target = round(s.param_ratio * 3 * d * m)

    def block(w):
        return sum(kanify_lib._projection_count(s, True, a, b, None, False) for a, b in ((d, w), (d, w), (w, d)))

    best = min(range(1, m + 1), key=lambda w: (abs(block(w) - target), w))
    assert kanify_lib.matched_mlp_width(cfg, s) == best
    non_affine = lambda w: w * w  # noqa: E731  (the binary-search fallback)
    assert kanify_lib._closest(non_affine, 50, 40) == min(range(1, 41), key=lambda w: (abs(w * w - 50), w))
