"""kanjax parameter paths ↔ Hugging Face tensor names and layouts.

Names are not a hand-written table: every `nnx.Param` of the model is walked and its path is
joined with '.' (`model.layers.3.mlp.up_proj.kernel`); the leaf is then passed through a small
codec table (`LEAF_CODECS`) that renames it and changes its layout:

    embedding → weight   (vocab, hidden), same layout as HF
    kernel    → weight   nnx.Linear (in, out) ↔ HF torch.nn.Linear (out, in): transposed
    other     → itself   norms' `weight`, biases, and KAN params such as `coef` (in, K, out)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class LeafCodec:
    """How one kind of leaf param is stored on the HF side.

    hf_leaf: the name of the last segment in the HF tensor name.
    to_hf / from_hf: numpy layout changes (inverse of each other).
    hf_shape: our shape → the HF shape (to check a file without reading its data).
    """
    hf_leaf: str
    to_hf: Callable[[np.ndarray], np.ndarray] = lambda a: a
    from_hf: Callable[[np.ndarray], np.ndarray] = lambda a: a
    hf_shape: Callable[[tuple], tuple] = lambda s: tuple(s)


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


LEAF_CODECS: dict[str, LeafCodec] = {
    "embedding": LeafCodec("weight"),
    "kernel": LeafCodec("weight", _transpose, _transpose, lambda s: tuple(reversed(s))),
}


def codec(path: tuple) -> LeafCodec:
    leaf = str(path[-1])
    return LEAF_CODECS.get(leaf, LeafCodec(leaf))


def hf_name(path: tuple) -> str:
    """nnx state path → HF tensor name, e.g. ('model', 'layers', 0, 'mlp', 'up_proj', 'kernel')
    → 'model.layers.0.mlp.up_proj.weight'."""
    return ".".join([str(p) for p in path[:-1]] + [codec(path).hf_leaf])


def param_leaves(model: nnx.Module) -> list[tuple[tuple, Any]]:
    """(path, nnx.Param) pairs of the model, in state order (works on abstract models too)."""
    return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def expected_hf_shapes(model: nnx.Module) -> dict[str, tuple]:
    """HF tensor name → the HF-layout shape the model needs."""
    return {hf_name(p): codec(p).hf_shape(tuple(v.shape)) for p, v in param_leaves(model)}


def to_hf_tensors(model: nnx.Module, dtype: Any = None) -> dict[str, np.ndarray]:
    """The model's params as HF-named, HF-layout, C-contiguous numpy arrays.

    dtype: output dtype (e.g. jnp.bfloat16); None keeps each param's own dtype.
    """
    out = {}
    for path, var in param_leaves(model):
        a = np.asarray(jax.device_get(var.get_value()))
        if dtype is not None:
            a = a.astype(jnp.dtype(dtype))
        out[hf_name(path)] = np.ascontiguousarray(codec(path).to_hf(a))
    return out
