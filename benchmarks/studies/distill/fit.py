"""Layer-wise distillation of a Llama model's MLP blocks: record them, re-learn them, splice them back.

Shape letters: n windows, t window length, d model width, N = n·t recorded tokens, b batch.

Each MLP block of a decoder layer is a function from the layer's normalised hidden state
x = post_attention_layernorm(r) (d) to its output y = mlp(x) (d). A replacement (a re-initialized
linear GLU, or a KAN MLP at the same parameter count) can be fitted to it directly by regression on
(x, y) pairs recorded from the pretrained model, with no full-model forward per step:

1. `record(model, windows, layers, out_dir)`: run the model over token windows (n, t) and store for
   every chosen block k its MLP input `L{k}_x.npy` and output `L{k}_y.npy`, (n, t, d) each, the
   residual stream entering the first chosen block `resid.npy` (n, t, d), and the tokens, as
   memory-mapped .npy files written one window batch at a time (memory stays bounded), with
   `manifest.json` (token counts per source, layers, dtype). `Recording(out_dir)` reads them back.
2. `replacement_mlp(config, layer, spec)`: a fresh MLP for block `layer`, linear (spec None) or built
   by kanify's projection factory (param-matched when spec.param_match == "width").
3. `fit_mlp(mlp, x, y, train_idx, FitConfig)`: MSE regression, AdamW with warmup + cosine,
   minibatches of tokens, a fixed token budget; `fit_errors` gives the relative error ‖ŷ−y‖/‖y‖.
4. `splice(model, {layer: mlp})`: a new model with those MLPs in place (the input is untouched).
5. `run_blocks(model, resid, start, stop)`: the decoder blocks [start, stop) from a recorded residual
   stream (the blocks before `start` are the same in every spliced model, so they never rerun):
   `benchmarks.studies.distill.in_situ.compare_in_situ` measures how errors compound once every block is replaced (each block's input
   then comes from fitted blocks), `sequential_targets` the data for fitting a block on the spliced
   model's own activations, and `finetune` trains the spliced MLPs end to end on the recorded windows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kanjax.llama.attention import attention_mask_bool, default_positions, rope_cos_sin, rope_inv_freq
from kanjax.llama.kan_spec import KANSpec
from kanjax.llama.kanify import KANProjections, kanified_config
from kanjax.llama.model import LlamaConfig, LlamaMLP, Projections
from kanjax.training.step import learning_rate_schedule

DTYPES = ("float32", "bfloat16")  # on disk; bfloat16 is stored as its raw uint16 bits (.npy has no bf16)


# ----------------------------------------------------------------------------- forward through blocks


def block_io(layer, h, cos, sin, mask):
    """One decoder block exactly as `LlamaDecoderLayer.__call__`, exposing its MLP's input and output.

    h (b,t,d) -> (block output (b,t,d), MLP input x (b,t,d), MLP output y (b,t,d)).
    """
    attn, _ = layer.self_attn(layer.input_layernorm(h), cos, sin, mask)
    r = h + attn
    x = layer.post_attention_layernorm(r)
    y = layer.mlp(x)
    return r + y, x, y


def _run(model, inputs, *, start: int, stop: int, capture: tuple, from_ids: bool, logits: bool):
    h = model.model.embed_tokens(inputs) if from_ids else inputs.astype(model.dtype)
    b, t = h.shape[:2]
    cos, sin = rope_cos_sin(default_positions(b, t, 0), rope_inv_freq(model.config), model.dtype)
    mask = attention_mask_bool(t, t, 0)  # full windows: causal, no padding
    blocks, extra = {}, {}
    for i in range(start, stop):
        if capture and i == capture[0]:
            extra["resid"] = h
        h, x, y = block_io(model.model.layers[i], h, cos, sin, mask)
        if i in capture:
            blocks[i] = (x, y, h)
    if logits:
        extra["logits"] = model.logits(model.model.norm(h))
    return h, blocks, extra


@functools.partial(jax.jit, static_argnames=("graphdef", "start", "stop", "capture", "from_ids", "logits"))
def _forward(graphdef, state, inputs, *, start: int, stop: int, capture: tuple, from_ids: bool, logits: bool):
    return _run(nnx.merge(graphdef, state), inputs, start=start, stop=stop, capture=capture, from_ids=from_ids,
                logits=logits)


def run_blocks(model, inputs, start: int, stop: int, capture: Sequence[int] = (), *, from_ids: bool = False,
               logits: bool = False):
    """Blocks [start, stop) on `inputs` -> (hidden (b,t,d), {k: (x_k, y_k, h_k) for k in capture},
    {"resid": the residual entering capture[0], "logits": (b,t,v) when `logits` (stop = the last block)}).

    x_k, y_k are block k's MLP input and output, h_k its output (the residual stream after it).

    inputs: token ids (b,t) with from_ids (then start must be 0), else the residual stream entering
    block `start` (b,t,d). Every row is a full causal window from position 0.
    """
    if from_ids and start != 0:
        raise ValueError("run_blocks: token ids enter at block 0")
    if logits and stop != model.config.num_hidden_layers:
        raise ValueError("run_blocks: logits need every block up to the last")
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(inputs), start=start, stop=stop, capture=tuple(sorted(capture)),
                    from_ids=from_ids, logits=logits)


# ----------------------------------------------------------------------------- recording


def _to_disk(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.asarray(a, np.float32)


def token_windows(stream: np.ndarray, seq_len: int, n_windows: int | None = None) -> np.ndarray:
    """(T,) token stream -> (n, seq_len) full windows, `n_windows` of them spread evenly over the
    stream (all of them when None or when the stream holds fewer)."""
    total = len(stream) // seq_len
    if total == 0:
        raise ValueError(f"a stream of {len(stream)} tokens holds no window of {seq_len}")
    n = total if n_windows is None else min(n_windows, total)
    starts = (np.arange(n) * total // n) * seq_len
    return np.stack([stream[s:s + seq_len] for s in starts]).astype(np.int32)


def record(model, windows: np.ndarray, layers: Sequence[int], out_dir: str | Path, *,
           sources: Mapping[str, int] | None = None, batch_size: int = 8, dtype: str = "float32",
           progress: bool = False) -> dict:
    """Record the MLP inputs/outputs of `layers` over `windows` (n, t) into `out_dir` (see module doc).

    sources: {name: number of windows}, in window order, for the manifest. Written into a
    `.partial` folder renamed at the end, so an interrupted recording is never mistaken for one.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    layers = tuple(sorted(int(k) for k in layers))
    windows = np.asarray(windows, np.int32)
    n, t = windows.shape
    d = model.config.hidden_size
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "tokens.npy", windows)
    disk = np.uint16 if dtype == "bfloat16" else np.float32
    files = {"resid": np.lib.format.open_memmap(tmp / "resid.npy", "w+", disk, (n, t, d))}
    for k in layers:
        for part in ("x", "y"):
            files[(k, part)] = np.lib.format.open_memmap(tmp / f"L{k}_{part}.npy", "w+", disk, (n, t, d))
    graphdef, state = nnx.split(model)
    t0 = time.perf_counter()
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="record", dynamic_ncols=True)
    for s in starts:
        ids = windows[s:s + batch_size]
        rows = len(ids)
        if rows < batch_size:  # one batch shape: pad with copies, keep the real rows
            ids = np.concatenate([ids, np.repeat(ids[-1:], batch_size - rows, 0)])
        _, out, extra = jax.device_get(_forward(graphdef, state, jnp.asarray(ids), start=0, stop=layers[-1] + 1,
                                                capture=layers, from_ids=True, logits=False))
        files["resid"][s:s + rows] = _to_disk(extra["resid"][:rows], dtype)
        for k in layers:
            files[(k, "x")][s:s + rows] = _to_disk(out[k][0][:rows], dtype)
            files[(k, "y")][s:s + rows] = _to_disk(out[k][1][:rows], dtype)
    for f in files.values():
        f.flush()
    del files
    manifest = {"layers": list(layers), "windows": n, "seq_len": t, "tokens": n * t, "hidden": d,
                "dtype": dtype, "resid_layer": layers[0], "sources": dict(sources or {"tokens": n}),
                "config": dataclasses.asdict(model.config), "seconds": time.perf_counter() - t0}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return manifest


def split_windows(n: int, val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Window indices {"train", "val", "test"} (sorted): a seeded draw, at least one window held out each."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n_val + n_test >= n:
        raise ValueError(f"{n} windows are too few to hold out {n_val} + {n_test}")
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


class Recording:
    """A finished `record` folder: memory-mapped arrays, token-major views, window splits."""

    def __init__(self, path: str | Path, val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise FileNotFoundError(f"{self.path}: no finished recording (manifest.json is missing)")
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.layers, self.seq_len = tuple(self.manifest["layers"]), self.manifest["seq_len"]
        self.splits = split_windows(self.manifest["windows"], val_fraction, test_fraction, seed)
        self.config = LlamaConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in self.manifest["config"].items()})

    def _load(self, name: str) -> np.ndarray:
        a = np.load(self.path / f"{name}.npy", mmap_mode="r")
        if self.manifest["dtype"] == "bfloat16":
            import ml_dtypes

            a = a.view(ml_dtypes.bfloat16)
        return a

    @property
    def tokens(self) -> np.ndarray:
        return np.load(self.path / "tokens.npy")

    @property
    def resid(self) -> np.ndarray:
        return self._load("resid")

    def x(self, layer: int) -> np.ndarray:
        """(N, d) MLP inputs of block `layer`, token-major (window w holds rows w·t .. w·t + t - 1)."""
        return self._load(f"L{layer}_x").reshape(-1, self.manifest["hidden"])

    def y(self, layer: int) -> np.ndarray:
        return self._load(f"L{layer}_y").reshape(-1, self.manifest["hidden"])

    def token_index(self, windows: np.ndarray) -> np.ndarray:
        return (np.asarray(windows)[:, None] * self.seq_len + np.arange(self.seq_len)[None]).reshape(-1)


# ----------------------------------------------------------------------------- replacements


def replacement_mlp(config: LlamaConfig, layer: int, spec: KANSpec | dict | None = None, *, seed: int = 0,
                    dtype=jnp.float32, param_dtype=jnp.float32) -> LlamaMLP:
    """A freshly initialized MLP for block `layer`: the linear GLU of the config's width (spec None or
    without targets), else the KAN MLP kanify would build there (spec.layers is replaced by [layer];
    with param_match="width" its width gives the linear block's parameter count)."""
    rngs = nnx.Rngs(seed)
    spec = spec if spec is None or isinstance(spec, KANSpec) else KANSpec.from_dict(spec)
    if spec is None or not spec.targets:
        return LlamaMLP(config, layer, projections=Projections(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    spec = dataclasses.replace(spec, layers=(layer,))
    new_config, ranks = kanified_config(config, spec)
    return LlamaMLP(new_config, layer, projections=KANProjections(spec, (layer,), ranks), dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


def mlp_width(mlp: LlamaMLP) -> int:
    """The intermediate width of a (linear or KAN) MLP block."""
    down = mlp.down_proj
    if isinstance(down, nnx.Linear):
        return down.in_features
    return (down.linear if down.strategy == "sequential" else down.kan).in_features


def splice(model, mlps: Mapping[int, nnx.Module], spec: KANSpec | None = None):
    """A copy of `model` with block k's MLP replaced by a copy of mlps[k]; the config records the new
    widths and activations (kanify's convention) and `spec` (when given) becomes the model's kan_spec."""
    new = nnx.clone(model)
    n = model.config.num_hidden_layers
    widths = [model.config.layer_intermediate_size(i) for i in range(n)]
    acts = [model.config.layer_activation(i) for i in range(n)]
    for k, mlp in mlps.items():
        new.model.layers[k].mlp = nnx.clone(mlp)
        widths[k], acts[k] = mlp_width(mlp), mlp.activation
    config = dataclasses.replace(
        model.config,
        intermediate_sizes=None if set(widths) == {model.config.intermediate_size} else tuple(widths),
        mlp_activations=None if set(acts) == {"silu"} else tuple(acts))
    new.config = new.model.config = config
    if spec is not None:
        new.kan_spec = dataclasses.replace(spec, layers=tuple(sorted(mlps)))
    return new


def mlp_state(mlp: nnx.Module) -> dict[str, np.ndarray]:
    """{parameter path: array} of a module, for np.savez."""
    from kanjax.llama.surgery import param_arrays

    return param_arrays(mlp)


def load_mlp_state(mlp: nnx.Module, arrays: Mapping[str, np.ndarray]) -> nnx.Module:
    """Fill `mlp` (built with the same shapes) from `mlp_state` arrays, in place; returns it."""
    from kanjax.llama.surgery import path_string

    state = nnx.state(mlp, nnx.Param)
    paths = [path_string(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    if sorted(paths) != sorted(arrays):
        raise ValueError(f"saved MLP parameters {sorted(arrays)} do not match the module's {sorted(paths)}")
    leaves = [jnp.asarray(arrays[p]) for p in paths]
    nnx.update(mlp, jax.tree.unflatten(jax.tree.structure(state), leaves))
    return mlp


# ----------------------------------------------------------------------------- fitting


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Regression budget: `steps` AdamW steps of `batch_tokens` tokens (linear warmup, cosine decay to
    min_lr_ratio · lr), global-norm clipping, weight decay on matrices only."""

    steps: int = 300
    batch_tokens: int = 1024
    lr: float = 1e-3
    warmup: int = 15
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    log_every: int = 25


def _optimizer(cfg: FitConfig) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg.lr, cfg.steps, cfg.warmup, "cosine", cfg.min_lr_ratio)
    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay,
                                   mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p)))


def _rows(a: np.ndarray, idx: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(a[idx], np.float32))  # callers sort idx: memory-mapped rows in file order


def _epochs(idx: np.ndarray, batch: int, rng: np.random.Generator):
    """Endless minibatches of `idx`, each epoch a fresh shuffle."""
    while True:
        perm = rng.permutation(idx)
        for s in range(0, len(perm) - batch + 1, batch):
            yield np.sort(perm[s:s + batch])  # sorted: memory-mapped rows are read in file order
        if len(perm) < batch:
            yield np.sort(rng.choice(idx, batch))


def fit_mlp(mlp: nnx.Module, x: np.ndarray, y: np.ndarray, train_idx: np.ndarray, cfg: FitConfig = FitConfig()):
    """Fit `mlp` (in place) to y ≈ mlp(x) on the token rows `train_idx` of x, y (N, d) by mean squared
    error -> (mlp, {"train_mse": [mean loss per log_every steps], "seconds", "tokens"})."""
    graphdef, params, rest = nnx.split(mlp, nnx.Param, ...)
    tx = _optimizer(cfg)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, rest, xb, yb):  # rest passed in, not closed over: never a compile-time constant
        def loss_fn(p):
            return jnp.mean(jnp.square(nnx.merge(graphdef, p, rest)(xb).astype(jnp.float32) - yb))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    batches = _epochs(np.asarray(train_idx), cfg.batch_tokens, np.random.default_rng(cfg.seed))
    losses, window, t0 = [], [], time.perf_counter()
    for s in range(cfg.steps):
        idx = next(batches)
        params, opt, loss = step(params, opt, rest, _rows(x, idx), _rows(y, idx))
        window.append(loss)
        if (s + 1) % cfg.log_every == 0 or s + 1 == cfg.steps:
            losses.append(float(np.mean(jax.device_get(window))))
            window = []
    nnx.update(mlp, params)
    return mlp, {"train_mse": losses, "seconds": time.perf_counter() - t0, "tokens": cfg.steps * cfg.batch_tokens}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sq_errors(graphdef, state, xb, yb):
    pred = nnx.merge(graphdef, state)(xb).astype(jnp.float32)
    return jnp.sum(jnp.square(pred - yb), axis=-1), jnp.sum(jnp.square(yb), axis=-1)


def fit_errors(mlp: nnx.Module, x: np.ndarray, y: np.ndarray, windows: np.ndarray, seq_len: int,
               batch_windows: int = 16) -> dict:
    """Held-out error of `mlp` on whole windows -> {"rel_err": ‖ŷ−y‖/‖y‖ over all their tokens,
    "mse", "err2": per-window Σ‖ŷ−y‖², "y2": per-window Σ‖y‖², "first_err2", "first_y2": the same at
    each window's first token only} (per-window sums for bootstraps). The first token is apart because
    SmolLM2's late MLPs put most of their output there (an attention-sink activation: 94% of block 28's
    ‖y‖² in the distillation study's recording)."""
    graphdef, state = nnx.split(mlp)
    err_parts, y_parts = [], []  # per batch: (windows, seq_len) squared norms per token
    windows = np.asarray(windows)
    for s in range(0, len(windows), batch_windows):
        w = windows[s:s + batch_windows]
        idx = (w[:, None] * seq_len + np.arange(seq_len)[None]).reshape(-1)
        e, n = jax.device_get(_sq_errors(graphdef, state, _rows(x, idx), _rows(y, idx)))
        err_parts.append(np.asarray(e, np.float64).reshape(len(w), seq_len))
        y_parts.append(np.asarray(n, np.float64).reshape(len(w), seq_len))
    err2, y2 = np.concatenate(err_parts), np.concatenate(y_parts)
    total = float(err2.sum())
    return {"rel_err": math.sqrt(total / max(float(y2.sum()), 1e-30)),
            "mse": total / (len(windows) * seq_len * x.shape[-1]), "err2": err2.sum(1).tolist(),
            "y2": y2.sum(1).tolist(), "first_err2": err2[:, 0].tolist(), "first_y2": y2[:, 0].tolist()}


__all__ = ["block_io", "run_blocks", "token_windows", "record", "split_windows", "Recording", "replacement_mlp",
           "mlp_width", "splice", "mlp_state", "load_mlp_state", "FitConfig", "fit_mlp", "fit_errors", "DTYPES"]
