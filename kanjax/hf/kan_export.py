"""Hugging Face export / import of KAN-ified models, runnable in transformers as remote code.

A KAN-ified model (one whose `kan_spec` has targets) is saved by `kanjax.hf.save_pretrained`
with its tensors under the generic kanjax names (`model.layers.0.mlp.up_proj.kan.coef`
(in, K, out), `...up_proj.linear.weight` (out, in), ...), and with

* a config.json of `model_type` "kanjax_llama": the Llama fields, plus `kan` (the full
  `KANSpec.to_dict()`), `kan_ranks` (bottleneck ranks of parameter-matched attention
  projections), `intermediate_sizes` / `mlp_activations` when set, and an `auto_map` naming
* two PyTorch files shipped in `kanjax/hf/remote/` and copied next to it, so that
  `transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (or
  `AutoModelForSequenceClassification`) rebuilds the same network in plain PyTorch.

`kanjax.hf.load_pretrained` reads such a folder back: the spec comes from `kan`, the per-layer
MLP widths and activations from the config, and the attention ranks from `kan_ranks` (stored,
not recomputed, so a later change to the matching search cannot change the architecture).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flax import nnx

from kanjax.kan.basis_terms import freeze
from kanjax.llama.kan_spec import ATTN_KINDS, KANSpec
from kanjax.llama.kanify import KANProjection, KANProjections
from kanjax.llama.model import LlamaConfig

MODEL_TYPE = "kanjax_llama"
REMOTE_CODE_DIR = Path(__file__).resolve().parent / "remote"
REMOTE_CODE_FILES = ("configuration_kanjax_llama.py", "modeling_kanjax_llama.py")
# The bases travel with the export unchanged: the remote modelling code imports this copy.
SHIPPED_BASIS = (Path(__file__).resolve().parents[1] / "kan" / "basis_terms.py", "kanjax_basis.py")
EXPORT_FILES = REMOTE_CODE_FILES + (SHIPPED_BASIS[1],)
ARCHITECTURES = {"LlamaForCausalLM": "KanjaxLlamaForCausalLM",
                 "LlamaForSequenceClassification": "KanjaxLlamaForSequenceClassification"}
AUTO_MAP = {
    "AutoConfig": "configuration_kanjax_llama.KanjaxLlamaConfig",
    "AutoModelForCausalLM": "modeling_kanjax_llama.KanjaxLlamaForCausalLM",
    "AutoModelForSequenceClassification": "modeling_kanjax_llama.KanjaxLlamaForSequenceClassification",
}


# ----------------------------------------------------------------------------- export


def kan_spec_of(model) -> KANSpec | None:
    """The model's KANSpec when it has KAN layers (non-empty targets), else None."""
    spec = getattr(model, "kan_spec", None)
    return spec if spec is not None and spec.targets else None


def is_kan_model(model) -> bool:
    return kan_spec_of(model) is not None


def attention_ranks(model) -> dict[str, int]:
    """{kind: r} of the attention projections that end in a rank-r bottleneck `proj`.

    Read off the modules themselves (what the tensors hold), which for a kanified model is
    `kanified_config(base_config, spec)[1]`."""
    ranks: dict[str, int] = {}
    for block in model.model.layers:
        for kind in ATTN_KINDS:
            module = getattr(block.self_attn, f"{kind}_proj")
            if isinstance(module, KANProjection) and module.proj is not None:
                ranks[kind] = int(module.proj.in_features)
    return ranks


def export_config(model, hf_config: Mapping[str, Any]) -> dict:
    """`hf_config` (the Llama config.json dict) turned into the kanjax_llama one."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"cannot export a KAN-ified {name}: only {sorted(ARCHITECTURES)}")
    cfg = dict(hf_config)
    spec = kan_spec_of(model)
    cfg.update(model_type=MODEL_TYPE, architectures=[ARCHITECTURES[name]], auto_map=dict(AUTO_MAP),
               kan=spec.to_dict(), kan_layers=list(spec.layer_indices(model.config.num_hidden_layers)),
               kan_ranks=attention_ranks(model))
    return cfg


def write_remote_code(folder: str | Path) -> None:
    """Copy the configuration and modelling files, and kanjax's basis file, next to config.json."""
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, Path(folder) / name)
    shutil.copyfile(SHIPPED_BASIS[0], Path(folder) / SHIPPED_BASIS[1])


# ----------------------------------------------------------------------------- import


def is_kan_config(hf_config: Mapping[str, Any]) -> bool:
    """Whether a config.json dict describes a KAN-ified model."""
    return bool((hf_config.get("kan") or {}).get("targets"))


def spec_from_config(hf_config: Mapping[str, Any]) -> KANSpec:
    kan = dict(hf_config["kan"])
    # Exports written before `center` existed hold uncentred layers; the default became "zero" later.
    kan.setdefault("center", "none")
    kan.setdefault("activation_init", "silu_fit")  # exports before it: the rational fit of SiLU
    # JSON turned tuples (grid_range, centers) into lists; KANSpec must stay hashable.
    kan["basis_params"] = {k: freeze(v) for k, v in (kan.get("basis_params") or {}).items()}
    return KANSpec.from_dict(kan)


def kan_projections(hf_config: Mapping[str, Any], config: LlamaConfig) -> tuple[KANProjections, KANSpec]:
    """The projection factory that rebuilds the exported layers, and the spec to attach.

    `config` is the kanjax LlamaConfig read from the same file: it already carries the
    per-layer widths and activations the factory's MLPs are built with."""
    spec = spec_from_config(hf_config)
    ranks = {str(k): int(v) for k, v in (hf_config.get("kan_ranks") or {}).items()}
    unknown = sorted(set(ranks) - set(ATTN_KINDS))
    if unknown:
        raise ValueError(f"kan_ranks: unknown projection kind(s) {unknown}; known: {ATTN_KINDS}")
    selected = spec.layer_indices(config.num_hidden_layers)
    return KANProjections(spec, selected, ranks), spec


def attach_spec(model: nnx.Module, spec: KANSpec) -> nnx.Module:
    """Record the spec on a loaded model, as `kanify` does (re-export, param reports)."""
    model.kan_spec = spec
    return model
