"""Config-driven data pipeline: raw data (hub or local files) -> cached token arrays -> grain batches.

Raw splits come from `kanjax.data.sources` (`load_raw`); this module loads the
tokenizer, tokenises a split once into a cache keyed by everything that decides the token ids, and
serves the arrays as batches.

The training loop calls `build(config.data, split, seed=...)`; `config.data` is the `data` section
of configs/base.py (every key is read, none has a default here):
  task        "classify" | "chat" | "text"
  name        hub id, or tfds:<name>[:<version>], a prepared TFDS dataset under `tfds_dir`
              (`kanjax.data.tfds`)
  path        local folder or file, overrides `name` (see `split_files` for the folder layout)
  tokenizer   hub id or folder; seq_len, batch_size (global), packing (chat), val_fraction,
  split_seed  (the validation carve), cache_dir (token cache; "" = ~/.cache/kanjax/data),
  num_workers, num_epochs (None = forever), revision (hub), tfds_dir, tfds_text_field
Array layouts are documented in `kanjax.data.arrays`; `make_iterator`/`eval_batches` live there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from kanjax.data import tfds as tfds_source
from kanjax.data.arrays import (
    Arrays,
    apply_id_map,
    concat,
    encode_chat,
    encode_classify,
    encode_text,
    eval_batches,
    make_iterator,
    num_rows,
    pack,
    pad_id,
    windows,
)
from kanjax.data.sources import (
    DataError,
    check_labels,
    check_split,
    check_task,
    env_offline,
    hub_reachable,
    load_raw,
    split_files,
)
from kanjax.hf.sources import looks_local

__all__ = ["DataError", "build", "cache_file", "check_labels", "eval_batches", "load_arrays", "load_raw",
           "load_tokenizer", "make_iterator", "split_files", "tokenizer_fingerprint", "train_texts",
           "train_token_counts"]

CACHE_VERSION = 1  # bump when the array layout changes: old cache files are then ignored
CHUNK = 1024  # rows tokenised per call: bounds the python-object memory of large splits


def load_tokenizer(name_or_path: str):
    """`AutoTokenizer`'s tokenizer from a folder or a hub id; offline, a hub id works only from the HF
    cache. A folder's named class is imported directly (`_named_tokenizer_class`)."""
    hint = "pass a local tokenizer folder (train.py: --config.data.tokenizer=<folder>; eval.py: --tokenizer)"
    if not name_or_path:
        raise DataError(f"data.tokenizer is not set; {hint}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        with _no_config_chatter():
            cls = _named_tokenizer_class(path) or _auto_tokenizer()
            return _quiet(cls.from_pretrained(str(path), trust_remote_code=False))
    if looks_local(name_or_path):
        raise FileNotFoundError(f"tokenizer folder {path} does not exist; {hint}")
    online = not env_offline() and hub_reachable()
    try:
        return _quiet(_auto_tokenizer().from_pretrained(name_or_path, local_files_only=not online))
    except OSError as e:
        if online:
            raise
        raise ConnectionError(f"tokenizer {name_or_path!r} is not a local folder nor in the HF cache, and the "
                      f"Hugging Face hub is unreachable (offline); {hint}") from e


def _auto_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer


def _named_tokenizer_class(folder: Path):
    """The class a folder's tokenizer_config.json names, imported directly (None if it names none that
    transformers has). AutoTokenizer resolves the same class but imports transformers' model
    configuration code, and through it PyTorch: seconds of start-up a training run never uses."""
    import transformers

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        return None
    if not isinstance(name, str) or not name.isidentifier():
        return None
    # transformers 5 has one class per tokenizer; a "...Fast" name is an alias AutoTokenizer maps back
    for candidate in (name, name.removesuffix("Fast")):
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls
    return None


@contextlib.contextmanager
def _no_config_chatter():
    """A KAN export's config.json names remote code (auto_map) that a tokenizer never needs:
    without trust_remote_code=False transformers asks "Do you wish to run the custom code? [y/N]"
    (eval.py would wait for an answer), then warns about the model type and a deprecated field."""
    import warnings

    logger = logging.getLogger("transformers.configuration_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _quiet(tokenizer):
    """Mark transformers' "sequence length is longer than the specified maximum" warning as given:
    kanjax tokenises whole documents on purpose (vocabulary counts, perplexity files) and cuts
    rows to data.seq_len itself, so the warning is noise. transformers' own once-per-tokenizer flag."""
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(flags, dict):
        flags["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


# --- tokenised arrays, cached -------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of everything that decides token ids: the full tokenizer.json (vocab, merges,
    normalisers, added tokens) when the tokenizer is fast, and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        core = _canonical_backend(backend.to_str())
    else:
        core = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    h = hashlib.sha256(core)
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _canonical_backend(serialised: str) -> bytes:
    """A backend's tokenizer.json with sorted keys and without per-call state. Memoised on the exact
    serialisation: parsing and re-dumping a large tokenizer.json is slow, and a run asks once per split."""
    spec = json.loads(serialised)
    # Calling the tokenizer with truncation/padding stores those settings in the backend: they
    # are per-call state, not part of the vocabulary, and must not change the cache key.
    spec.pop("truncation", None), spec.pop("padding", None)
    return json.dumps(spec, sort_keys=True).encode()


def _source_key(data_cfg) -> dict:
    """What identifies the raw data: every local data file's path, size and mtime (an edit
    invalidates the cache), a prepared TFDS dataset's folder and files, or the hub id and revision."""
    if data_cfg.path:
        files = sorted(f for fs in split_files(data_cfg.path).values() for f in fs)
        return {"files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
    if tfds_source.is_tfds(data_cfg.name):
        return tfds_source.source_key(data_cfg.name, data_cfg.tfds_dir, data_cfg.tfds_text_field)
    return {"name": data_cfg.name, "revision": data_cfg.revision or None}


def cache_file(data_cfg, split: str, tokenizer, kind: str = "") -> Path:
    """The .npz holding this split's arrays (kind "") or its token counts (kind "counts", which do
    not depend on seq_len or packing); its name hashes every input of the tokenisation."""
    task = check_task(data_cfg)
    counts = kind == "counts"
    key = {"version": CACHE_VERSION, "task": task, "split": check_split(split), "source": _source_key(data_cfg),
           "tokenizer": tokenizer_fingerprint(tokenizer), "seq_len": None if counts else int(data_cfg["seq_len"]),
           "packing": bool(data_cfg.packing) if task == "chat" and not counts else None,
           "val_fraction": float(data_cfg.val_fraction), "split_seed": int(data_cfg.split_seed)}
    if kind:
        key["kind"] = kind
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cache_dir = Path(data_cfg.cache_dir or Path.home() / ".cache" / "kanjax" / "data").expanduser()
    return cache_dir / f"{task}-{check_split(split)}{'-' + kind if kind else ''}-{digest}.npz"


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:  # write then rename: a crash never leaves a truncated cache
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _tokenize(ds, task: str, tokenizer, seq_len: int, packing: bool) -> tuple[Arrays, dict]:
    """Tokenise a raw split chunk by chunk; returns (arrays, meta counts)."""
    chunks = ds.iter(batch_size=CHUNK)
    if task == "classify":
        arrays = concat([encode_classify(tokenizer, b["text"], b["label"], seq_len) for b in chunks])
        names = getattr(ds.features["label"], "names", None)  # a hub ClassLabel knows the classes
        return arrays, {"num_labels": len(names) if names else int(arrays["labels"].max()) + 1}
    if task == "text":
        return windows(np.concatenate([encode_text(tokenizer, b["text"]) for b in chunks]), seq_len,
                       pad_id(tokenizer)), {}
    seqs, masks, meta = [], [], {"kept": 0, "truncated": 0, "dropped": 0}
    for b in chunks:
        s, m, counts = encode_chat(tokenizer, b["messages"], seq_len)
        seqs, masks = seqs + s, masks + m
        meta = {k: meta[k] + counts[k] for k in meta}
    meta = {f"conversations_{k}": v for k, v in meta.items()}
    return pack(seqs, masks, seq_len, pad_id(tokenizer), packing), meta


def load_arrays(data_cfg, split: str, tokenizer, num_labels: int | None = None) -> tuple[Arrays, dict]:
    """The tokenised split, from the cache when present (then neither the raw data nor the tokenizer
    is touched). Returns (arrays, meta); arrays as in `kanjax.data.arrays` (classify: input_ids,
    attention_mask (n, L), labels (n,); chat/text: input_ids, targets, loss_mask, segment_ids,
    positions (n, L)); meta has `cache_file` and counts (num_labels; conversations_kept/...)."""
    path = cache_file(data_cfg, split, tokenizer)
    if path.exists():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files if k != "__meta__"}
            meta = json.loads(str(f["__meta__"]))
    else:
        task = check_task(data_cfg)
        arrays, meta = _tokenize(load_raw(data_cfg, split, num_labels), task, tokenizer, int(data_cfg.seq_len),
                                 bool(data_cfg.packing))
        _save_npz(path, __meta__=np.array(json.dumps(meta)), **arrays)
    return arrays, {**meta, "cache_file": str(path)}


def train_token_counts(data_cfg, tokenizer) -> dict[int, int]:
    """{token id: occurrences} over the whole training texts as the model reads them (`train_texts`,
    no special tokens added, nothing cut), for trimming the vocabulary; cached beside the arrays, so
    a second run neither reads the raw data nor tokenises it again."""
    path = cache_file(data_cfg, "train", tokenizer, kind="counts")
    if path.exists():
        with np.load(path) as f:
            return dict(zip(f["ids"].tolist(), f["counts"].tolist()))
    texts = train_texts(data_cfg, tokenizer)
    counts = Counter(i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids)
    ids = np.array(sorted(counts), np.int64)
    _save_npz(path, ids=ids, counts=np.array([counts[i] for i in ids.tolist()], np.int64))
    return dict(counts)


def build(data_cfg, split: str, *, seed: int, tokenizer=None, id_map=None, num_labels: int | None = None):
    """Everything the training loop needs for one split: (iterator_or_arrays, info).

    train: a checkpointable grain iterator of this process's share of shuffled global batches
    (drop_remainder, `data.num_epochs` epochs, None = forever); validation/test: the arrays, for
    `eval_batches(arrays, batch_size)`. `id_map` (old id -> new id) remaps token ids for the
    trimmed-vocabulary model. num_labels (classify): every label must be in 0..num_labels−1 (checked
    in the files as they are read, and in the cached arrays). info: task, split, num_examples, steps_per_epoch, seq_len, batch_size,
    pad_id, vocab_size, cache_file, and num_labels (classify) or conversations_* counts (chat).
    """
    split = check_split(split)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg.tokenizer)
    arrays, meta = load_arrays(data_cfg, split, tokenizer, num_labels)
    if num_labels and "labels" in arrays:
        check_labels(arrays["labels"], num_labels, lambda i: f"{split} split row {i} (cached in {meta['cache_file']})")
    if id_map is not None:
        arrays = apply_id_map(arrays, id_map)
    n, batch_size = num_rows(arrays), int(data_cfg["batch_size"])
    info = {"task": check_task(data_cfg), "split": split, "num_examples": n, "seq_len": int(data_cfg["seq_len"]),
            "batch_size": batch_size, "pad_id": pad_id(tokenizer), "vocab_size": len(tokenizer),
            "steps_per_epoch": n // batch_size if split == "train" else math.ceil(n / batch_size), **meta}
    if split != "train":
        return arrays, info
    if n < batch_size:
        raise DataError(f"the train split has {n} examples, fewer than one batch of {batch_size} (data.batch_size)")
    return make_iterator(arrays, batch_size=batch_size, seed=seed, shuffle=True,
                         num_epochs=data_cfg.num_epochs, drop_remainder=True,
                         num_threads=int(data_cfg.num_workers)), info


def train_texts(data_cfg, tokenizer) -> list[str]:
    """The raw training texts as the model reads them (chat: rendered with the chat template), for
    counting token frequencies when the vocabulary is trimmed."""
    ds = load_raw(data_cfg, "train")
    if data_cfg.task == "chat":
        return [tokenizer.apply_chat_template(m, tokenize=False) for m in ds["messages"]]
    return list(ds["text"])
