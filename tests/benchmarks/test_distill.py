"""benchmarks.studies.distill.fit at tiny sizes: recording, fitting, splicing, in-situ comparison, sequential targets, fine-tuning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.studies.distill import fit as distill
from benchmarks.studies.distill import in_situ as distill_in_situ
from kanjax.kan.layer import count_params
from kanjax.llama.kan_spec import KANSpec
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaMLP

CONFIG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0)
KAN = KANSpec(targets=("mlp",), basis="chebyshev2", degree=2, domain="tanh", param_match="width")


@pytest.fixture(scope="module")
def model():
    m = LlamaForCausalLM(CONFIG, rngs=nnx.Rngs(0))
    for layer in m.model.layers:  # O(1) weights: the blocks really change the residual stream
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            proj.kernel[...] = proj.kernel[...] * 10
    return m


@pytest.fixture(scope="module")
def windows():
    return np.random.default_rng(0).integers(3, 96, (10, 16)).astype(np.int32)


@pytest.fixture(scope="module")
def recording(model, windows, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "teacher"
    distill.record(model, windows, (2, 3), out, sources={"a": 6, "b": 4}, batch_size=4)
    return distill.Recording(out, val_fraction=0.2, test_fraction=0.2)


class _Probe(nnx.Module):
    def __init__(self, inner, key):
        self.inner, self.key = inner, key

    def __call__(self, x):
        y = self.inner(x)
        self.sow(nnx.Intermediate, self.key, (x, y))
        return y


def _model_mlp_io(model, ids, layers):
    """The model's own MLP inputs/outputs, captured by probes on its unchanged forward."""
    probed = nnx.clone(model)
    for k in layers:
        probed.model.layers[k].mlp = _Probe(probed.model.layers[k].mlp, f"mlp{k}")
    logits, captured = nnx.capture(lambda m, i: m(i), nnx.Intermediate)(probed, ids)
    sown = {path[-1]: var.get_value() if isinstance(var, nnx.Variable) else var
            for path, var in nnx.to_flat_state(captured)}
    return logits, {k: sown[f"mlp{k}"][0] for k in layers}


def test_run_blocks_reproduces_the_model(model, windows):
    ids = jnp.asarray(windows[:3])
    logits, io = _model_mlp_io(model, ids, (2, 3))
    _, out, extra = distill.run_blocks(model, ids, 0, 4, (2, 3), from_ids=True, logits=True)
    np.testing.assert_allclose(extra["logits"], logits, atol=1e-5)
    for k in (2, 3):
        np.testing.assert_allclose(out[k][0], io[k][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[k][1], io[k][1], rtol=1e-5, atol=1e-5)
    # From the residual entering block 2, the remaining blocks give the same logits.
    _, tail, tail_extra = distill.run_blocks(model, extra["resid"], 2, 4, (3,), logits=True)
    np.testing.assert_allclose(tail_extra["logits"], logits, atol=1e-5)
    np.testing.assert_allclose(tail[3][1], io[3][1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block 0"):
        distill.run_blocks(model, ids, 1, 4, from_ids=True)


def test_recording_matches_the_models_own_values(model, windows, recording, tmp_path):
    m = recording.manifest
    assert (m["tokens"], m["windows"], m["seq_len"], m["layers"], m["sources"]) == (160, 10, 16, [2, 3],
                                                                                      {"a": 6, "b": 4})
    _, io = _model_mlp_io(model, jnp.asarray(windows), (2, 3))
    for k in (2, 3):
        np.testing.assert_allclose(recording.x(k).reshape(10, 16, -1), io[k][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(recording.y(k).reshape(10, 16, -1), io[k][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(recording.tokens, windows)
    assert recording.config == CONFIG and not (tmp_path / "teacher.partial").exists()
    splits = recording.splits
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(10))
    assert len(splits["val"]) == len(splits["test"]) == 2
    np.testing.assert_array_equal(recording.token_index([1]), np.arange(16, 32))
    half = distill.record(model, windows[:4], (3,), tmp_path / "bf16", dtype="bfloat16", batch_size=4)
    bf = distill.Recording(tmp_path / "bf16", 0.25, 0.25)
    assert half["dtype"] == "bfloat16"
    np.testing.assert_allclose(np.asarray(bf.y(3), np.float32), recording.y(3)[:64], rtol=1e-2, atol=1e-2)


def test_token_windows_spread_over_the_stream():
    stream = np.arange(100)
    w = distill.token_windows(stream, 10, 3)
    assert w.shape == (3, 10) and w[:, 0].tolist() == [0, 30, 60]
    assert distill.token_windows(stream, 10).shape == (10, 10)
    with pytest.raises(ValueError, match="no window"):
        distill.token_windows(stream[:5], 10)


def test_replacements_are_fresh_and_param_matched():
    big = LlamaConfig()  # SmolLM2-135M's MLP shape: the study's parameter matching
    linear, kan = distill.replacement_mlp(big, 27), distill.replacement_mlp(big, 27, KAN, seed=1)
    assert distill.mlp_width(linear) == 1536 and distill.mlp_width(kan) < 1536
    assert abs(count_params(kan) / count_params(linear) - 1) < 0.01
    assert kan.gate_proj.kan.basis == "chebyshev2" and kan.activation == "silu"
    other = distill.replacement_mlp(big, 27, seed=1)
    assert not np.allclose(linear.up_proj.kernel[...], other.up_proj.kernel[...])


def test_fit_recovers_a_known_small_function():
    """Regression of y = teacher_mlp(x) from 4k samples: the fitted linear GLU matches it on held-out tokens."""
    cfg = LlamaConfig(hidden_size=8, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=8)
    teacher = distill.replacement_mlp(dataclasses.replace(cfg, intermediate_size=6), 0, seed=5)
    for proj in (teacher.gate_proj, teacher.up_proj, teacher.down_proj):
        proj.kernel[...] = proj.kernel[...] * 30  # O(1) weights: a visibly non-linear function
    x = np.random.default_rng(0).normal(size=(4096, 8)).astype(np.float32)
    y = np.asarray(teacher(jnp.asarray(x)))
    student = distill.replacement_mlp(cfg, 0, seed=0)
    held = np.arange(64).reshape(4, 16)  # windows of 16 tokens: tokens 0..63
    before = distill.fit_errors(student, x, y, np.arange(4), 16)["rel_err"]
    fit_cfg = distill.FitConfig(steps=600, batch_tokens=256, lr=1e-2, warmup=20, log_every=100)
    student, info = distill.fit_mlp(student, x, y, np.arange(64, 4096), fit_cfg)
    after = distill.fit_errors(student, x, y, np.arange(4), 16)
    assert before > 0.9 and after["rel_err"] < 0.1, (before, after["rel_err"])
    assert info["train_mse"][-1] < info["train_mse"][0] and info["tokens"] == 600 * 256
    assert len(after["err2"]) == 4 and held.size == 64
    np.testing.assert_allclose(np.sqrt(sum(after["err2"]) / sum(after["y2"])), after["rel_err"])
    first = np.asarray(student(jnp.asarray(x[[0, 16, 32, 48]])))  # each window's first token, computed directly
    np.testing.assert_allclose(after["first_err2"], ((first - y[[0, 16, 32, 48]]) ** 2).sum(1), rtol=1e-4)
    np.testing.assert_allclose(after["first_y2"], (y[[0, 16, 32, 48]] ** 2).sum(1), rtol=1e-5)
    # The parameter-matched KAN MLP (tanh domain, width 8) learns too, though less exactly here.
    kan = distill.replacement_mlp(cfg, 0, KAN, seed=0)
    kan_before = distill.fit_errors(kan, x, y, np.arange(4), 16)["rel_err"]
    kan, _ = distill.fit_mlp(kan, x, y, np.arange(64, 4096), fit_cfg)
    assert distill.fit_errors(kan, x, y, np.arange(4), 16)["rel_err"] < min(0.75, 0.8 * kan_before)


def test_splice_with_own_weights_keeps_logits(model, windows):
    ids = jnp.asarray(windows[:2])
    own = {k: nnx.clone(model.model.layers[k].mlp) for k in (2, 3)}
    same = distill.splice(model, own)
    np.testing.assert_array_equal(same(ids), model(ids))
    assert same.config == model.config
    # Saved and reloaded parameters give the same block; a KAN block changes the config and the output.
    fresh = distill.load_mlp_state(distill.replacement_mlp(CONFIG, 3, seed=9), distill.mlp_state(own[3]))
    np.testing.assert_array_equal(distill.splice(model, {3: fresh})(ids), model(ids))
    kan = distill.replacement_mlp(CONFIG, 3, KAN)
    spliced = distill.splice(model, {3: kan}, KAN)
    assert spliced.config.intermediate_sizes[3] == distill.mlp_width(kan) < 48
    assert spliced.kan_spec.layers == (3,) and isinstance(model.model.layers[3].mlp.up_proj, nnx.Linear)
    assert not np.allclose(spliced(ids), model(ids))
    with pytest.raises(ValueError, match="do not match"):
        distill.load_mlp_state(distill.replacement_mlp(CONFIG, 3), distill.mlp_state(kan))


def test_in_situ_errors_and_sequential_targets(model, recording):
    test = recording.splits["test"]
    same = distill_in_situ.compare_in_situ(model, model, recording, test)
    assert set(same["blocks"]) == {2, 3} and max(same["blocks"][3]["h_err2"]) == 0
    assert max(np.abs(same["kl"])) < 1e-4 and same["top1"] == same["tokens"] == [16, 16]
    broken = distill.splice(model, {2: distill.replacement_mlp(CONFIG, 2, seed=3)})
    drift = distill_in_situ.compare_in_situ(model, broken, recording, test)
    assert min(drift["blocks"][2]["mlp_err2"]) > 0 and min(drift["blocks"][3]["h_err2"]) > 0
    assert drift["blocks"][3]["mlp_err2"][0] > 0  # block 3 is the teacher's own MLP, fed drifted inputs
    # Sequential targets: with nothing replaced upstream they are the recorded outputs; with block 2
    # replaced, target = teacher's block-3 output h_3 minus the student's residual before its MLP.
    x, target = distill_in_situ.sequential_targets(model, model, recording, 3, batch_size=4)
    np.testing.assert_allclose(x, recording.x(3), atol=1e-5)
    np.testing.assert_allclose(target, recording.y(3), atol=1e-5)
    x2, target2 = distill_in_situ.sequential_targets(model, broken, recording, 3, batch_size=4)
    ids = jnp.asarray(recording.tokens[:2])
    _, ref, _ = distill.run_blocks(model, ids, 0, 4, (3,), from_ids=True)
    _, new, _ = distill.run_blocks(broken, ids, 0, 4, (3,), from_ids=True)
    np.testing.assert_allclose(x2[:32], np.asarray(new[3][0]).reshape(32, -1), atol=1e-5)
    expected = np.asarray(ref[3][2] - (new[3][2] - new[3][1])).reshape(32, -1)
    np.testing.assert_allclose(target2[:32], expected, atol=1e-4)


def test_finetune_trains_only_the_chosen_mlps(model, recording):
    spliced = distill.splice(model, {3: distill.replacement_mlp(CONFIG, 3, seed=4)})
    cfg = distill.FitConfig(steps=6, lr=1e-2, warmup=1, log_every=3)
    tuned, info = distill_in_situ.finetune(spliced, recording, (3,), recording.splits["train"], cfg, batch_windows=2)
    assert len(info["train_loss"]) == 2 and info["tokens"] == 6 * 2 * 16
    before, after = nnx.state(spliced, nnx.Param), nnx.state(tuned, nnx.Param)
    from kanjax.llama.surgery import path_string

    changed = {path_string(p) for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(before),
                                                        jax.tree_util.tree_leaves_with_path(after))
               if not np.array_equal(a, b)}
    assert changed == {f"model/layers/3/mlp/{k}_proj/kernel" for k in ("gate", "up", "down")}
    assert isinstance(tuned.model.layers[3].mlp, LlamaMLP)
