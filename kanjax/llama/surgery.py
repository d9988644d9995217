"""Model surgery: new models made from old ones by cutting, slicing or re-drawing parameters.

    truncate_layers   the first n decoder blocks (a shallower model of the same shape)
    trim_vocab        the N most frequent tokens of a corpus (embedding rows; id map old → new)
    reinitialize      parameters whose path matches a regex re-drawn from the model's own init
    path_string       'model/layers/3/mlp/up_proj/kernel', the path names regexes are written against
    vocab_record      the id map as a small JSON-able record (what a checkpoint or export stores)

Works on any kanjax Llama model (causal LM or classifier, linear or KAN-ified): it reads
`model.config` and `model.model.{layers, embed_tokens}` and imports no model class, so
`kanjax.llama` can re-export `truncate_layers` and `trim_vocab` under its own name.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def with_config(model, config):
    """Set `config` on the model and its trunk in place (shapes must already agree)."""
    model.config = config
    model.model.config = config
    return model


def truncate_layers(model, n: int = 3):
    """A copy of ``model`` keeping its first n decoder blocks (config updated); the input is untouched."""
    cfg = model.config
    if not 1 <= n <= cfg.num_hidden_layers:
        raise ValueError(f"n must be in [1, {cfg.num_hidden_layers}], got {n}")
    new = nnx.clone(model)
    new.model.layers = nnx.List(list(new.model.layers)[:n])
    return with_config(new, dataclasses.replace(
        cfg, num_hidden_layers=n,
        intermediate_sizes=None if cfg.intermediate_sizes is None else cfg.intermediate_sizes[:n],
        mlp_activations=None if cfg.mlp_activations is None else cfg.mlp_activations[:n]))


def _special_ids(tokenizer, vocab_size: int) -> list[int]:
    ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return sorted(i for i in ids if i is not None and 0 <= i < vocab_size)


def trim_vocab(model, tokenizer, texts, size: int, *, unk_token_id: int | None = None,
               return_inverse: bool = False, kept=None, counts=None):
    """Keep the ``size`` most frequent token ids of ``tokenizer(texts)`` (ties: lower id first; ids never
    seen are not kept) plus every special/added token; returns a copy with sliced embedding rows
    (and lm_head columns when untied).

    New ids follow the old order (kept ids sorted ascending), so for SmolLM2 the 17 special tokens
    keep ids 0..16. Returns ``(new_model, id_map)`` where id_map (old vocab,) int32 maps old -> new;
    old ids that were dropped map to the reserved id = new id of ``unk_token_id`` (default the
    tokenizer's unk token, else its lowest special id; ``<|endoftext|>`` = 0 for SmolLM2).
    With ``return_inverse=True`` also returns new -> old (new vocab,) int32 (map generations back).
    ``kept`` (new -> old ids, e.g. a checkpoint's `vocab_record`) keeps exactly those ids instead:
    texts and size are then not used (a resumed run keeps the vocabulary it was trained with).
    ``counts`` ({id: occurrences}, e.g. `kanjax.data.pipeline.train_token_counts`, cached) stands for
    ``tokenizer(texts)``'s counts: texts are then not used.
    """
    cfg = model.config
    specials = _special_ids(tokenizer, cfg.vocab_size)
    if kept is None:
        if counts is None:
            texts = [texts] if isinstance(texts, str) else list(texts)
            counts = Counter(i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids)
        special_set = set(specials)
        frequent = sorted((i for i in counts if i not in special_set and i < cfg.vocab_size),
                          key=lambda i: (-counts[i], i))[:size]
        kept = sorted(set(specials) | set(frequent))
    kept = np.array(kept, np.int32)
    if unk_token_id is None:
        unk_token_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else (specials or kept)[0]
    if unk_token_id not in set(kept.tolist()):
        raise ValueError(f"unk_token_id {unk_token_id} is not among the kept ids")
    id_map = np.full(cfg.vocab_size, int(np.searchsorted(kept, unk_token_id)), np.int32)
    id_map[kept] = np.arange(len(kept), dtype=np.int32)

    new = nnx.clone(model)
    emb = new.model.embed_tokens
    emb.embedding.set_value(emb.embedding[...][kept])
    emb.num_embeddings = len(kept)
    head = getattr(new, "lm_head", None)
    if head is not None:
        head.kernel.set_value(head.kernel[...][:, kept])
        if head.bias is not None:
            head.bias.set_value(head.bias[...][kept])
        head.out_features = len(kept)
    remap = lambda i: None if i is None else int(id_map[i])  # noqa: E731
    eos = tuple(remap(i) for i in cfg.eos_token_ids) if isinstance(cfg.eos_token_id, tuple) else remap(cfg.eos_token_id)
    new_cfg = dataclasses.replace(cfg, vocab_size=len(kept), bos_token_id=remap(cfg.bos_token_id),
                                  eos_token_id=eos, pad_token_id=remap(cfg.pad_token_id))
    with_config(new, new_cfg)
    attach_vocab(new, vocab_record(id_map, kept))
    return (new, id_map, kept) if return_inverse else (new, id_map)


def reinitialize(model, pattern: str, seed: int):
    """Re-draw the parameters whose path matches `pattern` from the model class's own random init
    (in place); the rest keep their (pretrained) values. Returns the number of values re-drawn."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
    fresh = type(model)(model.config, dtype=model.dtype, param_dtype=getattr(model, "param_dtype", jnp.float32),
                        rngs=nnx.Rngs(seed + 1))
    params, new = nnx.state(model, nnx.Param), nnx.state(fresh, nnx.Param)
    paths = [path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    hits = {p for p in paths if regex.search(p)}
    if not hits:
        raise ValueError(f"{pattern!r} matches no parameter (paths look like {paths[0]!r})")
    merged = jax.tree_util.tree_map_with_path(lambda p, old, fr: fr if path_string(p) in hits else old, params, new)
    nnx.update(model, merged)
    return sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(new) if path_string(p) in hits)


def path_string(path) -> str:
    """'model/layers/3/mlp/up_proj/kernel' for a pytree path into an nnx.State of parameters."""
    parts = []
    for k in path:
        part = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        if part != "value":  # nnx.Variable's own pytree child
            parts.append(str(part))
    return "/".join(parts)


def param_arrays(module) -> dict[str, np.ndarray]:
    """{'model/layers/3/mlp/up_proj/kernel': array} of every nnx.Param of `module`, on the host."""
    state = nnx.state(module, nnx.Param)
    return {path_string(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state)}


def vocab_record(id_map: np.ndarray, kept: np.ndarray) -> dict:
    """trim_vocab's id map as {"kept": new → old ids, "unk": the new id every dropped id maps to,
    "source_vocab_size"}: a few kB of JSON that `id_map_from_record` turns back into the map."""
    id_map = np.asarray(id_map)
    unk = int(np.bincount(id_map).argmax())  # the dropped ids all map there (any id if none was dropped)
    return {"kept": np.asarray(kept).tolist(), "unk": unk, "source_vocab_size": int(len(id_map))}


def vocab_record_from_id_map(id_map: np.ndarray) -> dict:
    """`vocab_record` from the old → new id map alone (what `load_workdir` returns): each new id's
    lowest old id stands for it, so `id_map_from_record` gives back exactly this map."""
    id_map = np.asarray(id_map)
    kept = np.full(int(id_map.max()) + 1, -1, np.int64)
    kept[id_map[::-1]] = np.arange(len(id_map))[::-1]  # the lowest old id of each new id
    return vocab_record(id_map, kept)


VOCAB_ATTR = "kanjax_vocab"


def attach_vocab(model, record: dict | None):
    """Keep a trimmed vocabulary's record on the model itself (as a JSON string: static and
    hashable for nnx), so `kanjax.hf.save_pretrained` writes it with no argument. Returns model."""
    if record is not None:
        setattr(model, VOCAB_ATTR, json.dumps(record))
    return model


def attached_vocab(model) -> dict | None:
    """The record `attach_vocab` kept on `model`, or None (an untrimmed model)."""
    text = getattr(model, VOCAB_ATTR, None)
    return json.loads(text) if isinstance(text, str) else None


def id_map_from_record(record: dict | None) -> np.ndarray | None:
    """Inverse of `vocab_record`: (old vocab,) int32 mapping old → new ids."""
    if record is None:
        return None
    id_map = np.full(record["source_vocab_size"], record["unk"], np.int32)
    id_map[np.asarray(record["kept"], np.int64)] = np.arange(len(record["kept"]), dtype=np.int32)
    return id_map


__all__ = ["with_config", "truncate_layers", "trim_vocab", "reinitialize", "path_string", "param_arrays",
           "vocab_record", "vocab_record_from_id_map", "id_map_from_record", "attach_vocab", "attached_vocab"]
