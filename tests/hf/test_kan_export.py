"""kanjax.hf_kan: KAN-ified models exported for transformers (remote code) and imported back.

Tiny random Llamas, KAN-ified with `kanify` and given random non-zero parameters everywhere
(KAN biases included), are exported with `hf.save_pretrained`; transformers must load each with
`trust_remote_code=True` without missing / unexpected weights and reproduce our float32 logits on
a left-padded batch, and `hf.load_pretrained` must give back bit-identical parameters. The
remote-code KAN layer is also checked on its own against `KANLinear` for all 13 basis families
and all 4 domains. One slow test exports the real SmolLM2-135M-Instruct with KAN MLPs.
"""

import json
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from kanjax import hf
from kanjax.hf import kan_export as hf_kan
from kanjax.kan import basis as basis_lib
from kanjax.kan.layer import DOMAINS, KANLinear
from kanjax.llama.kanify import kanify
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from tests.helpers.hf import LogCapture, left_padded_batch, torch_logits

VOCAB = 96
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=1000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0, num_labels=3)
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
TOL = 1e-4


# ----------------------------------------------------------------------------- helpers

def _randomize(model, seed: int = 0, scale: float = 0.05):
    """Add N(0, scale²) noise to every parameter, so zero-initialised KAN biases, norms and
    from_linear coefficients all carry information through the export."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, noisy), rest)


def _tiny_kan(spec: dict, cls=LlamaForCausalLM, seed: int = 0, **config):
    base = cls(LlamaConfig(**{**TINY, **config}), rngs=nnx.Rngs(seed))
    return _randomize(kanify(base, spec, seed=seed), seed=seed + 1)


def _batch(b: int = 3, t: int = 9):
    return left_padded_batch(VOCAB, b, t)


def _load_remote(cls, folder, dtype=torch.float32):
    """transformers model from `folder` via remote code; asserts a clean load report."""
    capture, lib_logger = LogCapture(), logging.getLogger("transformers")
    lib_logger.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = cls.from_pretrained(folder, trust_remote_code=True, dtype=dtype,
                                              output_loading_info=True)
    finally:
        lib_logger.removeHandler(capture)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    messages = capture.records + [str(w.message) for w in caught]
    bad = [m for m in messages if any(s in m.lower() for s in (
        "missing", "unexpected", "newly initialized", "load report", "not used", "mismatch"))]
    assert not bad, bad
    assert type(model).__module__.endswith("modeling_kanjax_llama"), type(model)
    return model.eval()


def _same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def _export_round_trip(model, folder, *, task: str = "causal_lm"):
    """Export; transformers matches our logits on real tokens; import is bit-identical.

    Returns (transformers model, export folder)."""
    out = hf.save_pretrained(model, folder)
    ids, mask = _batch()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    auto = (transformers.AutoModelForCausalLM if task == "causal_lm"
            else transformers.AutoModelForSequenceClassification)
    torch_model = _load_remote(auto, out)
    ref = torch_logits(torch_model, ids, mask)
    if task == "causal_lm":  # padding queries attend to nothing: compare real tokens only
        ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
    err = float(np.max(np.abs(ours - ref)))
    assert err <= TOL, err

    back = hf.load_pretrained(out, task=task)
    assert back.kan_spec == model.kan_spec and back.config == model.config
    _same_tensors(hf.to_hf_tensors(model), hf.to_hf_tensors(back))
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))))
    return torch_model, out


# ----------------------------------------------------------------------------- export round trips

CASES = {
    "chebyshev2": (dict(targets=["all"], basis="chebyshev2", degree=3), {}),
    "jacobi": (dict(targets=["all"], basis="jacobi", basis_params={"alpha": 0.5, "beta": 2.0}), {}),
    "bspline": (dict(targets=["all"], basis="bspline",
                     basis_params={"grid": 4, "order": 2, "grid_range": (-1.5, 1.5)}), {}),
    "rbf": (dict(targets=["all"], basis="rbf", basis_params={"num_centers": 5}), {}),
    "rational": (dict(targets=["all"], basis="rational", degree=3, den_degree=2), {}),
    # untied head, biases and llama3 RoPE go with the parallel case
    "parallel": (dict(targets=["all"], strategy="parallel", basis="legendre", layers=[0]),
                 dict(tie_word_embeddings=False, attention_bias=True, mlp_bias=True, rope_scaling=LLAMA3)),
    "sequential": (dict(targets=["q", "v", "mlp"], strategy="sequential", basis="hermite", domain="clip"), {}),
    "no_silu": (dict(targets=["mlp"], layers="last:1", mlp_activation="none", basis="gegenbauer"), {}),
    "param_match": (dict(targets=["all"], param_match="width", basis="chebyshev2"), {}),
    "layernorm_silu": (dict(targets=["all"], domain="layernorm", base="silu", basis="laguerre"), {}),
    # center="zero" is the default: every case above is centred
    "uncentred_degree5": (dict(targets=["all"], center="none", basis="chebyshev", degree=5), {}),
    # issue 42's layer options: the group-rational KAN (uneven groups: 32 and 48 channels in 3),
    # with the linear base branch and domain "none", parameter-matched; the warm start (SiLU replaced
    # by a group rational after the linear gate); the learned per-channel input scale
    "group_rational": (dict(targets=["all"], basis="group_rational", degree=3, den_degree=2, num_groups=3), {}),
    "group_rational_linear_none": (dict(targets=["mlp"], basis="group_rational", base="linear", domain="none",
                                        degree=4, den_degree=3, param_match="width"), {}),
    "warm_start_activation": (dict(targets=["gate"], strategy="activation", basis="group_rational",
                                   mlp_activation="none", degree=5, den_degree=4, layers="last:1"), {}),
    # the residual warm start, SiLU + P/Q (P = 0 until _randomize's noise; kanjax_basis.silu in PyTorch)
    "warm_start_residual": (dict(targets=["gate"], strategy="activation", basis="group_rational",
                                 mlp_activation="none", degree=5, den_degree=4, layers="last:1",
                                 activation_init="silu_residual"), {}),
    "input_scale_bspline_none": (dict(targets=["all"], basis="bspline", input_scale=True, domain="none",
                                      base="linear", basis_params={"grid": 4, "order": 2, "grid_range": (-3, 3)}), {}),
    "input_scale_chebyshev2": (dict(targets=["mlp"], basis="chebyshev2", input_scale=True), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_and_round_trips(case, tmp_path):
    spec, config = CASES[case]
    model = _tiny_kan(spec, **config)
    _export_round_trip(model, tmp_path / case)


def test_export_older_than_center_loads_uncentred(tmp_path):
    """Exports written before `center` existed lack the key and hold uncentred layers: both
    loaders must read them so, not with today's default ("zero")."""
    model = _tiny_kan(dict(targets=["mlp", "q"], center="none", basis="legendre", degree=3))
    out = hf.save_pretrained(model, tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["kan"]["center"]
    (out / "config.json").write_text(json.dumps(cfg))
    ids, mask = _batch()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    back = hf.load_pretrained(out)
    assert back.kan_spec.center == "none"
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(ids), jnp.asarray(mask))), ours)
    ref = torch_logits(_load_remote(transformers.AutoModelForCausalLM, out), ids, mask)
    real = mask.astype(bool)
    assert float(np.max(np.abs(ours[real] - ref[real]))) <= TOL


def test_export_older_than_activation_init_loads_the_silu_fit(tmp_path):
    """Exports written before `activation_init` existed hold P/Q alone: both loaders read them so."""
    model = _tiny_kan(CASES["warm_start_activation"][0])
    out = hf.save_pretrained(model, tmp_path / "old")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kan"].pop("activation_init") == "silu_fit"
    (out / "config.json").write_text(json.dumps(cfg))
    ids, mask = _batch()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    back = hf.load_pretrained(out)
    assert back.kan_spec == model.kan_spec
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(ids), jnp.asarray(mask))), ours)
    torch_model = _load_remote(transformers.AutoModelForCausalLM, out)
    assert not torch_model.model.layers[1].mlp.gate_proj.kan.residual
    real = mask.astype(bool)
    assert float(np.max(np.abs(ours[real] - torch_logits(torch_model, ids, mask)[real]))) <= TOL


def test_exported_config_and_files(tmp_path):
    """config.json carries the spec, ranks, widths and auto_map; the remote code is copied."""
    model = _tiny_kan(dict(targets=["all"], param_match="width", layers="last:1", mlp_activation="none"))
    out = hf.save_pretrained(model, tmp_path / "kan")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "kanjax_llama" and cfg["architectures"] == ["KanjaxLlamaForCausalLM"]
    assert cfg["auto_map"] == {
        "AutoConfig": "configuration_kanjax_llama.KanjaxLlamaConfig",
        "AutoModelForCausalLM": "modeling_kanjax_llama.KanjaxLlamaForCausalLM",
        "AutoModelForSequenceClassification": "modeling_kanjax_llama.KanjaxLlamaForSequenceClassification"}
    assert cfg["kan"] == json.loads(json.dumps(model.kan_spec.to_dict()))
    widths = cfg["intermediate_sizes"]
    assert widths[0] == TINY["intermediate_size"] != widths[1] == model.config.intermediate_sizes[1]
    assert cfg["mlp_activations"] == ["silu", "none"]
    assert set(cfg["kan_ranks"]) == {"q", "k", "v", "o"}
    assert cfg["kan_ranks"]["q"] == model.model.layers[1].self_attn.q_proj.proj.in_features
    for name in hf_kan.REMOTE_CODE_FILES:
        assert (out / name).read_bytes() == (hf_kan.REMOTE_CODE_DIR / name).read_bytes()
    # The bases travel unchanged: the export runs kanjax's own basis file, not a copy of it.
    assert (out / "kanjax_basis.py").read_bytes() == hf_kan.SHIPPED_BASIS[0].read_bytes()
    assert cfg["kan_layers"] == [1]
    names = load_file(out / "model.safetensors")
    assert names["model.layers.1.mlp.up_proj.kan.coef"].shape == model.model.layers[1].mlp.up_proj.kan.coef.shape
    assert "model.layers.0.mlp.up_proj.weight" in names  # layer 0 stays linear

    # A linear model saved over the folder is a plain Llama again: no stale remote code.
    linear = LlamaForCausalLM(LlamaConfig(**TINY), rngs=nnx.Rngs(0))
    hf.save_pretrained(kanify(linear, {}), out)  # empty spec = the linear model
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not any((out / name).exists() for name in hf_kan.EXPORT_FILES)


def test_transformers_generate_matches_kanjax(tmp_path):
    """The exported model decodes with transformers' KV cache as kanjax does (greedy)."""
    from kanjax.llama.generate import generate

    model = _tiny_kan(dict(targets=["all"], basis="chebyshev2", base="linear"), seed=3)
    out = hf.save_pretrained(model, tmp_path / "gen")
    torch_model = _load_remote(transformers.AutoModelForCausalLM, out)
    ids = _batch(b=1)[0]
    n = 6
    ours = np.asarray(generate(model, jnp.asarray(ids), max_new_tokens=n))  # EOS 2, then pad 0
    with torch.inference_mode():
        ref = torch_model.generate(input_ids=torch.as_tensor(ids, dtype=torch.long), max_new_tokens=n,
                                   do_sample=False, eos_token_id=2, pad_token_id=0).numpy()
    ref = ref[:, ids.shape[1]:]
    ref = np.pad(ref, ((0, 0), (0, n - ref.shape[1])))  # transformers stops at EOS
    np.testing.assert_array_equal(ours, ref)


def test_bf16_export(tmp_path):
    """bf16 files: transformers runs them in bf16 (basis still float32) close to our float32
    logits, and kanjax reads them back bit-identically."""
    model = _tiny_kan(dict(targets=["all"], basis="rational", base="silu"))
    out = hf.save_pretrained(model, tmp_path / "bf16", dtype=jnp.bfloat16)
    torch_model = _load_remote(transformers.AutoModelForCausalLM, out, dtype=torch.bfloat16)
    assert torch_model.model.layers[0].mlp.up_proj.kan.den_coef.dtype == torch.bfloat16
    ids, mask = _batch()
    real = mask.astype(bool)
    ref = torch_logits(torch_model, ids, mask)[real]
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[real]
    assert np.max(np.abs(ref - ours)) < 0.05 * np.max(np.abs(ours))
    back = hf.load_pretrained(out, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    _same_tensors(load_file(out / "model.safetensors"), hf.to_hf_tensors(back))


def test_classifier_export(tmp_path):
    model = _tiny_kan(dict(targets=["mlp", "o"], basis="chebyshev2", strategy="parallel"),
                      cls=LlamaForSequenceClassification)
    torch_model, out = _export_round_trip(model, tmp_path / "clf", task="classify")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["KanjaxLlamaForSequenceClassification"]
    assert torch_model.score.weight.shape == (TINY["num_labels"], TINY["hidden_size"])


# ----------------------------------------------------------------------------- the KAN layer alone

FAMILIES = [(name, {}) for name in sorted(basis_lib.BASES)] + [
    ("bspline", {"grid": 3, "order": 1, "grid_range": (-0.5, 2.0)}),
    ("rbf", {"centers": (-0.9, -0.1, 0.4, 1.3), "width": 0.7}),
    ("laguerre", {"alpha": 1.5}),
    ("gegenbauer", {"alpha": -0.25}),
]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The remote modelling module as an export ships it (with kanjax's basis file beside it),
    imported as a package the way transformers imports remote code."""
    import importlib
    import importlib.util
    import sys

    root = tmp_path_factory.mktemp("remote")
    pkg = root / "kanjax_export_pkg"
    pkg.mkdir()
    hf_kan.write_remote_code(pkg)
    (pkg / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(pkg.name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    sys.modules[pkg.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[pkg.name])
    return importlib.import_module(f"{pkg.name}.modeling_kanjax_llama")


@pytest.mark.parametrize("degree", [3, 6])
@pytest.mark.parametrize("family,params", FAMILIES,
                         ids=[f"{name}-custom" if params else name for name, params in FAMILIES])
def test_remote_kan_layer_matches_kanjax(remote, family, params, degree):
    """Every family, domain and centre: same active columns, offsets and scales (float64, exactly),
    same output."""
    rng = np.random.RandomState(0)
    x = (1.5 * rng.randn(7, 5)).astype(np.float32)
    for domain, center in [(d, "none") for d in DOMAINS] + [("tanh", "zero"), ("layernorm", "gauss")]:
        ours = KANLinear(5, 3, basis=family, degree=degree, domain=domain, center=center, base="silu",
                         rngs=nnx.Rngs(1), **params)
        ours.bias[...] = jnp.asarray(rng.randn(3), jnp.float32)
        layer = remote.KanjaxKANLinear(5, 3, basis=family, degree=degree, domain=domain, center=center,
                                       base="silu", den_degree=ours.den_degree, use_bias=True, basis_params=params)
        assert (layer.active, layer.offsets, layer.scales) == (ours.active, ours.offsets, ours.scales)
        assert layer.interval == ours.interval
        with torch.no_grad():
            for name in ("coef", "base_kernel", "bias", "den_coef", "num_coef", "input_scale"):
                if getattr(layer, name) is not None:
                    getattr(layer, name).copy_(torch.from_numpy(np.array(getattr(ours, name)[...])))
            ref = layer(torch.as_tensor(x)).numpy()
        want = np.asarray(ours(jnp.asarray(x)))
        np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))),
                                   err_msg=f"{family} {params} domain={domain} center={center}")


# ----------------------------------------------------------------------------- real weights

@pytest.mark.slow
def test_smollm2_kan_export_matches_transformers(smollm2_gguf, tokenizer, tmp_path, record_property):
    """SmolLM2-135M-Instruct with its last two MLPs as exact KAN conversions, exported and run by
    transformers in float32.

    On real weights kanjax (XLA) and transformers (torch) already differ by ~1.4e-4 on the plain
    linear SmolLM2 (logits up to ~40; float32 rounding through 30 blocks). That floor, measured
    here on the linear export, is one draw of the rounding noise; the KAN model rounds along other
    paths, so its gap is another draw of it (seen: 1.03x the floor on the CI machine, 1.48e-4 vs
    1.44e-4). The KAN export is held to 1e-4 or, if larger, to twice that floor: its layers and
    remote code add nothing beyond float32 noise. The layers themselves are held to 1e-5 in
    test_remote_kan_layer_matches_kanjax."""
    import time

    from kanjax.llama.generate import chat_prompt

    base = hf.load_gguf(smollm2_gguf)
    model = kanify(base, dict(targets=["mlp"], layers="last:2", basis="chebyshev2",
                              init="from_linear", domain="none"))
    ids, mask = chat_prompt(tokenizer, ["What is the capital of France?", "Name a primary colour."])
    ids, mask = np.asarray(ids), np.asarray(mask)
    assert (mask[:, 0] == 0).any()  # really left padded
    real = mask.astype(bool)

    start = time.perf_counter()
    out = hf.save_pretrained(model, tmp_path / "smollm2_kan", tokenizer=tokenizer)
    torch_model = _load_remote(transformers.AutoModelForCausalLM, out)
    record_property("export_and_load_s", round(time.perf_counter() - start, 1))
    assert sum(type(m).__name__ == "KanjaxKANLinear" for m in torch_model.modules()) == 6
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[real]
    ref = torch_logits(torch_model, ids, mask)[real]
    err = float(np.max(np.abs(ref - ours)))
    del torch_model

    linear_out = hf.save_pretrained(base, tmp_path / "smollm2_linear")
    linear_torch = transformers.AutoModelForCausalLM.from_pretrained(linear_out, dtype=torch.float32).eval()
    linear_ref = torch_logits(linear_torch, ids, mask)[real]
    floor = float(np.max(np.abs(linear_ref - np.asarray(base(jnp.asarray(ids), jnp.asarray(mask)))[real])))
    record_property("max_abs_logit_diff_kan", err)
    record_property("max_abs_logit_diff_linear_floor", floor)
    print(f"max |logit diff| kanjax vs transformers: KAN export {err:.2e}, linear export {floor:.2e}")
    assert err <= max(TOL, 2 * floor), (err, floor)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    np.testing.assert_array_equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear])
