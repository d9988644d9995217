"""Group-rational KAN (KAT's GR-KAN): the layer and the activation against plain numpy, KAT's init,
the least-squares fit of SiLU, and the kanify warm start (strategy "activation") on tiny and real
SmolLM2 weights. The export round trips are in tests/hf/test_kan_export.py (CASES)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kanjax.kan import basis as basis_lib
from kanjax.kan.group_rational import (
    SILU_DEGREES,
    SILU_FIT_RANGE,
    GroupRational,
    fit_errors,
    fit_rational,
    silu_fit,
    silu_numpy,
)
from kanjax.kan.layer import KANLinear, count_params
from kanjax.llama.kan_spec import KANSpec
from kanjax.llama.kanify import KANProjection, kanify
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM

TINY = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
IDS = jnp.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


# ----------------------------------------------------------------------------- numpy reference

def _ref_rational(x, a, b):
    """KAT's unit written out: (Σ a_i x^i) / (1 + Σ |b_j| |x|^j), float64."""
    num = sum(a[i] * x ** i for i in range(len(a)))
    den = 1.0 + sum(abs(b[j]) * np.abs(x) ** (j + 1) for j in range(len(b)))
    return num / den


def _ref_groups(x, num, den):
    """x (n, C): channel c uses group floor(c·G / C), contiguous blocks (KAT's c // (C/G) when G | C)."""
    n_ch, g = x.shape[-1], num.shape[0]
    out = np.empty_like(x, dtype=np.float64)
    for c in range(n_ch):
        k = c * g // n_ch
        out[:, c] = _ref_rational(x[:, c].astype(np.float64), num[k], den[k])
    return out


def _random_rationals(rng, groups, m, n):
    num = rng.normal(size=(groups, m + 1)) * 0.5
    den = rng.normal(size=(groups, n))
    return num, den


@pytest.mark.parametrize("domain", ["none", "tanh"])
@pytest.mark.parametrize("n_in,groups", [(12, 4), (10, 3)])  # KAT's even blocks, and uneven ones
def test_grkan_layer_equals_numpy_reference(domain, n_in, groups):
    """y = φ(squash(s ⊙ x)) @ W + x @ W_base + bias, φ per channel group, against plain numpy."""
    rng = np.random.default_rng(0)
    layer = KANLinear(n_in, 5, basis="group_rational", degree=3, den_degree=2, num_groups=groups, domain=domain,
                      base="linear", input_scale=True, rngs=nnx.Rngs(0))
    num, den = _random_rationals(rng, groups, 3, 2)
    w, wb, bias, scale = (rng.normal(size=s) for s in ((n_in, 1, 5), (n_in, 5), (5,), (n_in,)))
    for name, value in (("num_coef", num), ("den_coef", den), ("coef", w), ("base_kernel", wb), ("bias", bias),
                        ("input_scale", scale)):
        getattr(layer, name)[...] = jnp.asarray(value, jnp.float32)
    x = rng.normal(size=(64, n_in)) * 2.0
    u = x * scale
    u = np.tanh(u) if domain == "tanh" else u
    ref = _ref_groups(u, num, den) @ w[:, 0, :] + x @ wb + bias
    ours = np.asarray(layer(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert count_params(layer) == n_in * 5 + n_in * 5 + 5 + n_in + groups * (3 + 1 + 2)


def test_group_rational_activation_equals_numpy_reference():
    rng = np.random.default_rng(1)
    act = GroupRational(24, num_groups=8, degree=5, den_degree=4, init="identity")
    num, den = _random_rationals(rng, 8, 5, 4)
    act.num_coef[...], act.den_coef[...] = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
    x = rng.normal(size=(3, 7, 24)) * 3.0
    ours = np.asarray(act(jnp.asarray(x, jnp.float32)))
    ref = _ref_groups(x.reshape(-1, 24), num, den).reshape(x.shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert act(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="num_groups"):
        GroupRational(4, num_groups=0)


def test_residual_group_rational_equals_numpy_reference():
    """residual=True: φ_g = SiLU + P_g/Q_g on random coefficients, against SiLU written as x / (1 + e^-x)."""
    rng = np.random.default_rng(2)
    act = GroupRational(20, num_groups=3, degree=5, den_degree=4, init="identity", residual=True)
    num, den = _random_rationals(rng, 3, 5, 4)
    act.num_coef[...], act.den_coef[...] = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
    x = (rng.normal(size=(4, 5, 20)) * 3.0).astype(np.float32)
    xd = x.astype(np.float64).reshape(-1, 20)
    num, den = np.asarray(act.num_coef[...], np.float64), np.asarray(act.den_coef[...], np.float64)
    ref = (xd / (1.0 + np.exp(-xd)) + _ref_groups(xd, num, den)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(act(jnp.asarray(x))), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(basis_lib.group_rational(xd, num, den, np, residual=True), ref.reshape(-1, 20),
                               rtol=1e-12, atol=1e-12)  # the shipped formula in float64


def test_residual_starts_as_silu_and_both_coefficients_learn():
    """init="zero": P = 0, so φ = SiLU bitwise (the shipped formula) and to float32 rounding of
    jax.nn.silu. With P = 0, ∂φ/∂b = −P|x|^j/Q² = 0: at step 0 only the numerator gets a gradient
    (every coefficient, every group); after one step (Adam's first step, −lr·sign(g)) both do."""
    act = GroupRational(24, num_groups=8, degree=5, den_degree=4, init="zero", residual=True)  # WARM's fit, cached
    assert np.all(np.asarray(act.num_coef[...]) == 0)
    np.testing.assert_allclose(np.asarray(act.den_coef[...]), np.tile(silu_fit(5, 4).den_coef, (8, 1)), rtol=1e-6)
    x = jnp.concatenate([jax.random.normal(jax.random.key(0), (64, 24)) * 8.0,
                         jnp.linspace(-100.0, 100.0, 24)[None], jnp.zeros((1, 24))])
    y = np.asarray(act(x))
    np.testing.assert_array_equal(y, np.asarray(basis_lib.silu(x, jnp)))
    np.testing.assert_allclose(y, np.asarray(jax.nn.silu(x)), rtol=1e-6, atol=1e-7)

    graphdef, state = nnx.split(act)
    xs = jax.random.normal(jax.random.key(1), (256, 24)) * 2.0
    target = jax.nn.gelu(xs)

    grads = jax.jit(jax.grad(lambda s: jnp.mean((nnx.merge(graphdef, s)(xs) - target) ** 2)))

    g0 = grads(state)
    assert np.all(np.asarray(g0["num_coef"][...]) != 0)
    assert np.all(np.asarray(g0["den_coef"][...]) == 0)
    step = jax.tree.map(lambda p, g: p - 1e-4 * jnp.sign(g), state, g0)
    g1 = grads(step)
    for name in ("num_coef", "den_coef"):
        g = np.asarray(g1[name][...])
        assert np.all(np.isfinite(g)) and np.all(g != 0), name


@pytest.mark.parametrize("domain,e_phi2", [("none", 1.0), ("tanh", None)])
def test_grkan_starts_linear_with_kats_variance_preserving_init(domain, e_phi2):
    """Every φ_g starts as the identity, so the layer is x ↦ squash(x) @ W; W's std is
    1 / sqrt(in · E[φ(x)²]) for x ~ N(0, 1) (KAT's gain), so unit inputs give unit outputs."""
    n_in = 512
    layer = KANLinear(n_in, 256, basis="group_rational", degree=5, den_degree=4, domain=domain, rngs=nnx.Rngs(3))
    x = np.asarray(jax.random.normal(jax.random.key(0), (1024, n_in)))
    u = np.tanh(x) if domain == "tanh" else x
    w = np.asarray(layer.coef[...])[:, 0, :]
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), u @ w, rtol=1e-5, atol=1e-4)
    if e_phi2 is None:  # E[tanh(x)²], x ~ N(0, 1), by quadrature
        t = np.linspace(-12, 12, 200001)
        e_phi2 = float(np.sum(np.tanh(t) ** 2 * np.exp(-t * t / 2)) * (t[1] - t[0]) / math.sqrt(2 * math.pi))
    assert abs(float(w.std()) * math.sqrt(n_in * e_phi2) - 1.0) < 0.02
    assert abs(float(np.std(u @ w)) - 1.0) < 0.05


def test_denominator_and_numerator_learn_from_the_identity():
    """|b| is where(b < 0, -b, b): at b = 0 its derivative is 1, so a zero denominator still gets
    a gradient (abs would give 0 in PyTorch)."""
    layer = KANLinear(6, 3, basis="group_rational", degree=3, den_degree=2, num_groups=2, domain="none",
                      rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (32, 6)) * 2
    grads = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x) ** 2))(state)
    assert np.all(np.asarray(grads["den_coef"][...]) != 0) and np.all(np.asarray(grads["num_coef"][...]) != 0)


# ----------------------------------------------------------------------------- the SiLU fit

def test_fit_is_a_least_squares_optimum_and_reports_its_errors():
    """The fit's residual cannot be lowered by scipy's least_squares started from it (an independent
    optimiser), and its reported max / RMS errors are those of the returned coefficients."""
    from scipy.optimize import least_squares

    fit = fit_rational(silu_numpy, -8.0, 8.0, 5, 4)
    x = np.linspace(-8.0, 8.0, 2001)

    def resid(p):
        return _ref_rational(x, p[:6], p[6:]) - silu_numpy(x)

    p0 = np.concatenate([fit.num_coef, fit.den_coef])
    better = least_squares(resid, p0, method="lm", xtol=1e-15, ftol=1e-15)
    assert better.cost >= 0.99 * float(0.5 * resid(p0) @ resid(p0))
    np.testing.assert_allclose(fit.max_error, np.max(np.abs(resid(p0))), rtol=1e-9)
    np.testing.assert_allclose(fit.rms_error, np.sqrt(np.mean(resid(p0) ** 2)), rtol=1e-9)
    assert fit.max_error < 2e-3  # KAT's degrees fit SiLU well on a narrow range


@pytest.mark.slow
def test_warm_start_silu_fit_on_its_range(record_property):
    """The warm start's fit over SILU_FIT_RANGE: recorded, and held to what it reaches (measured
    1.9e-3 max, 5.2e-4 RMS at (9, 8); KAT's (5, 4) reaches only 0.24 on so wide a range)."""
    fit = silu_fit(*SILU_DEGREES)
    record_property("silu_fit_max_error", fit.max_error)
    record_property("silu_fit_rms_error", fit.rms_error)
    print(f"SiLU fit {SILU_DEGREES} on {SILU_FIT_RANGE}: max {fit.max_error:.2e}, RMS {fit.rms_error:.2e}")
    assert (fit.lo, fit.hi) == SILU_FIT_RANGE
    assert fit.max_error < 2.5e-3 and fit.rms_error < 7e-4


# ----------------------------------------------------------------------------- the warm start

WARM = dict(targets=["gate"], strategy="activation", basis="group_rational", mlp_activation="none",
            degree=5, den_degree=4, num_groups=8, init="from_linear")


def test_activation_strategy_needs_the_gate_and_no_silu():
    for bad in (dict(basis="chebyshev2"), dict(targets=["up"]), dict(mlp_activation="silu"), dict(base="silu"),
                dict(input_scale=True)):
        with pytest.raises(ValueError, match="strategy='activation'"):
            KANSpec(**{**WARM, **bad})
    assert KANSpec(**WARM).targets == ("gate",)


def test_warm_start_keeps_projections_and_swaps_silu_for_its_fit():
    """Pretrained gate/up/down kernels are kept; the block computes down(φ(gate x) ⊙ up x) with
    φ = the rational fit of SiLU in every group; logits move by no more than the fit error allows."""
    base = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    model = kanify(base, {**WARM, "layers": "last:2"})
    assert model.config.mlp_activations == ("silu", "none", "none")
    fit = silu_fit(5, 4)
    for i in (1, 2):
        mlp, src = model.model.layers[i].mlp, base.model.layers[i].mlp
        assert isinstance(mlp.gate_proj, KANProjection) and isinstance(mlp.gate_proj.kan, GroupRational)
        np.testing.assert_array_equal(mlp.gate_proj.linear.kernel[...], src.gate_proj.kernel[...])
        np.testing.assert_array_equal(mlp.up_proj.kernel[...], src.up_proj.kernel[...])
        np.testing.assert_allclose(np.asarray(mlp.gate_proj.kan.num_coef[...]),
                                   np.tile(fit.num_coef, (8, 1)), rtol=1e-6)
        x = np.asarray(jax.random.normal(jax.random.key(i), (9, TINY.hidden_size)))
        g = x @ np.asarray(src.gate_proj.kernel[...])
        ref = (fit(g) * (x @ np.asarray(src.up_proj.kernel[...]))) @ np.asarray(src.down_proj.kernel[...])
        np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x, jnp.float32))), ref, rtol=1e-5, atol=1e-6)
    extra = count_params(model) - count_params(base)
    assert extra == 2 * 8 * (5 + 1 + 4)


def test_activation_init_field_is_validated_and_round_trips():
    assert KANSpec(**WARM).activation_init == "silu_fit"  # the default: today's warm start
    spec = KANSpec(**WARM, activation_init="silu_residual")
    assert KANSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["activation_init"] == "silu_residual"
    with pytest.raises(ValueError, match="activation_init"):
        KANSpec(**WARM, activation_init="silu")
    with pytest.raises(ValueError, match="activation_init"):
        KANSpec(targets=["mlp"], activation_init="silu_residual")


def test_residual_warm_start_is_the_pretrained_model_on_tiny_llama():
    """activation_init="silu_residual": φ = SiLU + P/Q with P = 0 in every group, the pretrained
    kernels kept; logits equal the base model's to float32 rounding, at the same extra parameters."""
    base = LlamaForCausalLM(TINY, rngs=nnx.Rngs(0))
    model = kanify(base, {**WARM, "layers": "last:2", "activation_init": "silu_residual"})
    for i in (1, 2):
        mlp, src = model.model.layers[i].mlp, base.model.layers[i].mlp
        assert isinstance(mlp.gate_proj.kan, GroupRational) and mlp.gate_proj.kan.residual
        np.testing.assert_array_equal(mlp.gate_proj.linear.kernel[...], src.gate_proj.kernel[...])
        assert np.all(np.asarray(mlp.gate_proj.kan.num_coef[...]) == 0)
    np.testing.assert_allclose(np.asarray(model(IDS)), np.asarray(base(IDS)), rtol=0, atol=1e-5)
    assert count_params(model) - count_params(base) == 2 * 8 * (5 + 1 + 4)


def test_warm_start_rational_is_trainable():
    model = kanify(LlamaForCausalLM(TINY, rngs=nnx.Rngs(0)), {**WARM, "layers": [0]})
    graphdef, state = nnx.split(model)

    def loss(s):
        return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, s)(IDS))[..., 3])

    grads = jax.grad(loss)(state)
    rational = {jax.tree_util.keystr(k): np.asarray(g) for k, g in jax.tree_util.tree_leaves_with_path(grads)
                if "gate_proj" in jax.tree_util.keystr(k) and "'kan'" in jax.tree_util.keystr(k)}
    assert len(rational) == 2, rational.keys()  # num_coef, den_coef
    assert all(np.all(np.isfinite(g)) and np.all(np.any(g != 0, axis=-1)) for g in rational.values())


# ----------------------------------------------------------------------------- real weights

@pytest.mark.slow
def test_warm_start_on_real_smollm2(smollm2_gguf, tokenizer, shared_data, record_property):
    """SmolLM2-135M with the SiLU of its last 5 MLPs replaced by the (9, 8) group-rational fit: extra
    parameters ≤ 0.1%, every real gate pre-activation inside the fit's range, and the logits on real
    WikiText-2 text (float32) within what the fit allows.

    NOT the issue's 1e-3: measured 3.6e-2 max |Δlogit| on these 2 × 256 tokens (6.6e-3 at the first
    token, the attention sink; 2.2e-2 on 4 × 256 other WikiText-2 tokens). The logits move ~12× the fit's max error (1.9e-3 at (9, 8) on [-48, 64]), and a
    rational with the even denominator 1 + Σ|b||x|^i cannot follow SiLU's two asymptotes, so a range
    wide enough for blocks 27-29's outliers (|gate| up to 50) keeps the fit near 1e-3."""
    from benchmarks.studies.distill import fit as distill
    from kanjax.hf.pretrained import load_gguf

    base = load_gguf(smollm2_gguf)
    text = (shared_data / "text" / "wikitext2_test.txt").read_text()[50_000:60_000]
    ids = jnp.asarray(np.asarray(tokenizer(text)["input_ids"][:512]).reshape(2, 256))
    spec = {**WARM, "layers": "last:5", "degree": SILU_DEGREES[0], "den_degree": SILU_DEGREES[1]}
    model = kanify(base, spec)
    extra = count_params(model) - count_params(base)
    assert extra == 5 * 8 * (SILU_DEGREES[0] + 1 + SILU_DEGREES[1]) <= 0.001 * count_params(base)

    _, blocks, _ = distill.run_blocks(base, ids, 0, 30, capture=tuple(range(25, 30)), from_ids=True)
    gates = np.concatenate([np.asarray(blocks[i][0] @ base.model.layers[i].mlp.gate_proj.kernel[...]).ravel()
                            for i in range(25, 30)])
    errors = fit_errors(silu_fit(*SILU_DEGREES), gates)
    assert errors["outside_range"] == 0, errors

    def run(m):
        graphdef, state = nnx.split(m)
        return np.asarray(jax.jit(lambda s, i: nnx.merge(graphdef, s)(i))(state, ids))

    diff = np.abs(run(model) - run(base))
    record_property("warm_start_max_abs_logit_diff", float(diff.max()))
    record_property("warm_start_first_token_max_diff", float(diff[:, 0].max()))
    record_property("silu_fit_max_error_on_real_gates", errors["max_error"])
    record_property("extra_params", extra)
    print(f"warm start: max |Δlogit| {diff.max():.2e} (first token {diff[:, 0].max():.2e}); fit on real gates "
          f"max {errors['max_error']:.2e} RMS {errors['rms_error']:.2e}; +{extra} params")
    assert diff.max() < 0.05
    ref = run(base)
    top2 = np.sort(ref, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 0.1  # the next-token choice is kept where it is not a tie
    np.testing.assert_array_equal(run(model).argmax(-1)[clear], ref.argmax(-1)[clear])


@pytest.mark.slow
def test_residual_warm_start_on_real_smollm2(smollm2_gguf, tokenizer, shared_data, record_property):
    """Issue 42's bar, met by activation_init="silu_residual": SmolLM2-135M with the SiLU of its last 5
    MLPs replaced by SiLU + P/Q (P = 0) keeps its float32 logits on 2 × 256 real WikiText-2 tokens within
    1e-3 at the (9, 8) rationals' 720 extra parameters (≤ 0.1%), the same count as the fitted start
    above. Measured 4.0e-5 max |Δlogit| (the fitted start: 3.6e-2), all of it rounding of the shipped
    SiLU (basis_terms.silu, one formula for JAX and PyTorch) against jax.nn.silu: with jax.nn.silu in
    its place the logits are bitwise the base model's."""
    from kanjax.hf.pretrained import load_gguf

    base = load_gguf(smollm2_gguf)
    text = (shared_data / "text" / "wikitext2_test.txt").read_text()[50_000:60_000]
    ids = jnp.asarray(np.asarray(tokenizer(text)["input_ids"][:512]).reshape(2, 256))
    spec = {**WARM, "layers": "last:5", "degree": SILU_DEGREES[0], "den_degree": SILU_DEGREES[1],
            "activation_init": "silu_residual"}
    model = kanify(base, spec)
    extra = count_params(model) - count_params(base)
    assert extra == 5 * 8 * (SILU_DEGREES[0] + 1 + SILU_DEGREES[1]) == 720 <= 0.001 * count_params(base)

    def run(m):
        graphdef, state = nnx.split(m)
        return np.asarray(jax.jit(lambda s, i: nnx.merge(graphdef, s)(i))(state, ids))

    diff = np.abs(run(model) - run(base))
    record_property("residual_warm_start_max_abs_logit_diff", float(diff.max()))
    record_property("extra_params", extra)
    print(f"residual warm start: max |Δlogit| {diff.max():.2e}; +{extra} params of {count_params(base)}")
    assert diff.max() < 1e-3
