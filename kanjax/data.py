"""Config-driven data pipeline: raw data (hub or local files) -> cached token arrays -> grain batches.

The training loop calls `build(config.data, split, seed=...)`; `config.data` is the `data` section
of configs/base.py (every key is read, none has a default here):
  task        "classify" | "chat" | "text"
  name        hub id, or tfds:<name>[:<version>], a prepared TFDS dataset under `tfds_dir`
              (`kanjax.tfds_source`)
  path        local folder or file, overrides `name` (see `split_files` for the folder layout)
  tokenizer   hub id or folder; seq_len, batch_size (global), packing (chat), val_fraction,
  split_seed  (the validation carve), cache_dir (token cache; "" = ~/.cache/kanjax/data),
  num_workers, num_epochs (None = forever), revision (hub), tfds_dir, tfds_text_field
Array layouts are documented in `kanjax.data_arrays`; `make_iterator`/`eval_batches` live there.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import socket
from pathlib import Path

import numpy as np

from kanjax import tfds_source
from kanjax.config import InputError
from kanjax.data_arrays import (Arrays, apply_id_map, concat, encode_chat, encode_classify,
                                encode_text, eval_batches, make_iterator, num_rows, pack, pad_id,
                                windows)

__all__ = ["load_raw", "load_tokenizer", "load_arrays", "build", "make_iterator", "eval_batches",
           "split_files", "cache_file", "tokenizer_fingerprint", "train_texts"]

TASK_COLUMNS = {"classify": ("text", "label"), "chat": ("messages",), "text": ("text",)}
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
SPLIT_PREFIXES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                  "test": ("test",)}
LAYOUT = {"classify": "train.csv and test.csv with columns text,label (or the original AG News "
                      "3-column CSVs)",
          "chat": "*.jsonl files with a `messages` column (name them train*/test* to fix the splits)",
          "text": "*.txt files (paragraphs are examples)"}
CACHE_VERSION = 1  # bump when the array layout changes: old cache files are then ignored
CHUNK = 1024  # rows tokenised per call: bounds the python-object memory of large splits


def _task(cfg) -> str:
    task = cfg.task
    if task not in TASK_COLUMNS:
        raise ValueError(f"data.task must be one of {sorted(TASK_COLUMNS)}, got {task!r}")
    return task


def _canonical_split(split: str) -> str | None:
    return next((canonical for canonical, prefixes in SPLIT_PREFIXES.items() if split in prefixes), None)


def _split(split: str) -> str:
    canonical = _canonical_split(split)
    if canonical is None:
        raise ValueError(f"unknown split {split!r}; use train, validation or test")
    return canonical


# --- raw data -----------------------------------------------------------------------------------


def split_files(path: Path) -> dict[str, list[Path]]:
    """Data files per split of a local `path`.

    A file is the `train` split. In a folder (or its `data/` subfolder when the top level has none),
    files with a data suffix (.csv .json .jsonl .parquet .txt) named train*, validation*/valid*/val*/
    dev*, test* form those splits (other files are ignored); with no such names, all are `train`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.is_file():
        return {"train": [path]}
    for folder in (path, path / "data"):
        found = sorted(f for f in folder.glob("*") if f.is_file() and f.suffix.lower() in BUILDERS)
        if found:
            break
    else:
        raise FileNotFoundError(f"no data files ({' '.join(BUILDERS)}) in {path}")
    splits: dict[str, list[Path]] = {}
    for f in found:
        name = f.name.lower()
        split = next((s for s, prefixes in SPLIT_PREFIXES.items() for p in prefixes
                      if name.startswith(p) and not name[len(p)].isalpha()), None)
        if split:
            splits.setdefault(split, []).append(f)
    return splits or {"train": found}


def _is_original_agnews(file: Path) -> bool:
    """The original AG News release: no header, rows `"3","title","description"` (class 1..4)."""
    with open(file, newline="", encoding="utf-8") as fh:
        row = next(csv.reader(fh), None)
    return row is not None and len(row) == 3 and row[0].strip().isdigit()


class DataError(InputError):
    """A data file that cannot be used; the message names the file, and the line or byte at fault."""


def _check_readable(file: Path, builder: str) -> None:
    """Fail on what `datasets` would report as a long traceback without the file's name: an empty
    file, bytes that are not UTF-8, a JSON-lines row that does not parse."""
    if builder == "parquet":  # binary; pyarrow names the file in its own errors
        return
    raw = file.read_bytes()
    if not raw.strip():
        raise DataError(f"{file}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text: byte offset {e.start} is {raw[e.start:e.start + 1]!r}; "
                        "save the file as UTF-8") from None
    if builder == "csv" and len([ln for ln in text.splitlines() if ln.strip()]) == 1 and not _is_original_agnews(file):
        raise DataError(f"{file}: no rows (a header only?)")
    if builder != "json":
        return
    try:
        json.loads(text)  # one JSON document (a list of rows) is fine too
        return
    except json.JSONDecodeError:
        pass
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{file}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None


def check_labels(labels, num_labels: int, where) -> None:
    """Labels must be integers 0..num_labels−1; `where(i)` names row i (file and line, or split and row)."""
    for i, v in enumerate(labels):
        if isinstance(v, str):
            v = v.strip()
            if not (v.lstrip("-").isdigit()):
                raise DataError(f"{where(i)}: label {v!r} is not an integer class index 0..{num_labels - 1}")
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_labels:
            raise DataError(f"{where(i)}: label {v!r} is outside 0..{num_labels - 1} (model.num_labels={num_labels})")


def _check_columns(ds, task: str, source: str) -> None:
    missing = [c for c in TASK_COLUMNS[task] if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing} needed for task {task!r}; "
                         f"columns found: {ds.column_names}")


def _load_file(file: Path, task: str, num_labels: int | None = None):
    """One local file as a datasets.Dataset holding exactly the task's columns; with num_labels,
    every label is checked (an integer in 0..num_labels−1), an offender named by file and line."""
    import datasets

    builder = BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(f"{file}: unsupported file type; expected one of {sorted(BUILDERS)}")
    _check_readable(file, builder)
    kwargs = {}
    if builder == "csv":
        kwargs["keep_default_na"] = False  # a headline reading "NA" or "null" stays text
        if task == "classify" and _is_original_agnews(file):
            ds = datasets.load_dataset("csv", data_files=str(file), split="train", header=None,
                                       column_names=["class", "title", "description"], **kwargs)
            if num_labels:  # classes 1..K in this release
                check_labels([int(c) - 1 if str(c).strip().isdigit() else c for c in ds["class"]], num_labels,
                             lambda i: f"{file}:{i + 1}")
            return ds.map(lambda b: {"text": [f"{t} {d}" for t, d in zip(b["title"], b["description"])],
                                     "label": [int(c) - 1 for c in b["class"]]},
                          batched=True, remove_columns=["class", "title", "description"])
    if builder == "text":
        kwargs["sample_by"] = "paragraph"  # blank-line separated blocks: units to carve a val split
    ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    if len(ds) == 0:
        raise DataError(f"{file}: no rows" + (" (a header only?)" if builder == "csv" else ""))
    _check_columns(ds, task, str(file))
    if task == "classify" and num_labels:
        first = 2 if builder == "csv" else 1  # the line of row 0: after the header in a CSV
        check_labels(ds["label"], num_labels, lambda i: f"{file}:{i + first}")
    return ds.select_columns(list(TASK_COLUMNS[task]))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline run fails in milliseconds instead of after HF's retries."""
    from huggingface_hub import constants

    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _env_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str, task: str, revision: str | None = None):
    """A hub dataset as a DatasetDict (with HF_HUB_OFFLINE=1, from the local HF cache)."""
    import datasets

    message = (f"cannot load hub dataset {name!r}: the Hugging Face hub is unreachable (offline?). "
               f"Pass local files with --config.data.path=<local folder> holding {LAYOUT[task]}.")
    if not _env_offline() and not _hub_reachable():
        raise ConnectionError(message + " (A copy in the HF cache is used when HF_HUB_OFFLINE=1.)")
    try:
        dd = datasets.load_dataset(name, revision=revision)
    except ConnectionError as e:
        raise ConnectionError(message) from e
    for split_ds in dd.values():
        _check_columns(split_ds, task, f"hub dataset {name!r}")
    return dd


def _carve(ds, split: str, val_fraction: float, seed: int):
    """The train or validation part of `ds`: a seeded random `val_fraction` of rows (file order kept)."""
    n = len(ds)
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction={val_fraction} of {n} rows leaves an empty train or validation split")
    perm = np.random.default_rng(seed).permutation(n)
    return ds.select(np.sort(perm[:n_val] if split == "validation" else perm[n_val:]))


def load_raw(data_cfg, split: str, num_labels: int | None = None):
    """The raw `split` ("train" | "validation" | "test") as a `datasets.Dataset` with the task's
    columns (classify: text, label 0..K-1; chat: messages; text: text).

    Local files (`data.path`, see `split_files`) take precedence over the hub id or `tfds:` name in
    `data.name` (TFDS splits other than train/validation/test are ignored). With no
    validation split, train is split once: a random `val_fraction` (default 0.1) of its rows, seeded
    by `data.split_seed` (not the training seed) so the split never changes. With num_labels
    (classify), every label of the split's files is checked first (`check_labels`).
    """
    import datasets

    task, split = _task(data_cfg), _split(split)
    if data_cfg.path:
        files = split_files(data_cfg.path)
        source = f"data path {data_cfg.path}"

        def load(s):
            parts = [_load_file(f, task, num_labels) for f in files[s]]
            return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        name = data_cfg.name
        if not name:
            raise ValueError(f"task {task!r} needs data.path (local {LAYOUT[task]}) or data.name (hub id)")
        if tfds_source.is_tfds(name):
            loaders = tfds_source.load_splits(name, data_cfg.tfds_dir, task, data_cfg.tfds_text_field)
            files = {_canonical_split(s): f for s, f in loaders.items() if _canonical_split(s)}
            source = f"TFDS dataset {name!r}"

            def load(s):
                return files[s]()
        else:
            files = _load_hub(name, task, data_cfg.revision or None)
            source = f"hub dataset {name!r}"
            load = files.__getitem__
    def checked(s):
        ds = load(s)
        if task == "classify" and num_labels and not data_cfg.path:  # local files are checked as read
            check_labels(ds["label"], num_labels, lambda i: f"{source} [{s}] row {i}")
        return ds

    if split in files and (split == "test" or "validation" in files):
        return checked(split)
    if split in ("train", "validation") and "train" in files:
        return _carve(checked("train"), split, float(data_cfg.val_fraction), int(data_cfg.split_seed))
    hint = f"; expected a file named {split}.* (e.g. {split}.csv, {split}.jsonl)"
    hint = hint if data_cfg.path else ""
    raise FileNotFoundError(f"{source} has no {split!r} split (found {sorted(files)}){hint}")


def load_tokenizer(name_or_path: str):
    """`AutoTokenizer` from a folder or a hub id; offline, a hub id works only from the HF cache."""
    from transformers import AutoTokenizer

    hint = "pass a local tokenizer folder (train.py: --config.data.tokenizer=<folder>; eval.py: --tokenizer)"
    if not name_or_path:
        raise ValueError(f"data.tokenizer is not set; {hint}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"tokenizer folder {path} does not exist; {hint}")
    online = not _env_offline() and _hub_reachable()
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=not online)
    except OSError as e:
        if online:
            raise
        raise ConnectionError(f"tokenizer {name_or_path!r} is not a local folder nor in the HF cache, and the "
                      f"Hugging Face hub is unreachable (offline); {hint}") from e


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
    serialisation: parsing and re-dumping 1.5 MB of JSON is ~0.45 s, and a run asks once per split."""
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


def cache_file(data_cfg, split: str, tokenizer) -> Path:
    """The .npz holding this split's arrays; its name hashes every input of the tokenisation."""
    task = _task(data_cfg)
    key = {"version": CACHE_VERSION, "task": task, "split": _split(split), "source": _source_key(data_cfg),
           "tokenizer": tokenizer_fingerprint(tokenizer), "seq_len": int(data_cfg["seq_len"]),
           "packing": bool(data_cfg.packing) if task == "chat" else None,
           "val_fraction": float(data_cfg.val_fraction), "split_seed": int(data_cfg.split_seed)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cache_dir = Path(data_cfg.cache_dir or Path.home() / ".cache" / "kanjax" / "data").expanduser()
    return cache_dir / f"{task}-{_split(split)}-{digest}.npz"


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
    is touched). Returns (arrays, meta); arrays as in `kanjax.data_arrays` (classify: input_ids,
    attention_mask (n, L), labels (n,); chat/text: input_ids, targets, loss_mask, segment_ids,
    positions (n, L)); meta has `cache_file` and counts (num_labels; conversations_kept/...)."""
    path = cache_file(data_cfg, split, tokenizer)
    if path.exists():
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files if k != "__meta__"}
            meta = json.loads(str(f["__meta__"]))
    else:
        task = _task(data_cfg)
        arrays, meta = _tokenize(load_raw(data_cfg, split, num_labels), task, tokenizer, int(data_cfg.seq_len),
                                 bool(data_cfg.packing))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:  # write then rename: a crash never leaves a truncated cache
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    return arrays, {**meta, "cache_file": str(path)}


def build(data_cfg, split: str, *, seed: int, tokenizer=None, id_map=None, num_labels: int | None = None):
    """Everything the training loop needs for one split: (iterator_or_arrays, info).

    train: a checkpointable grain iterator of this process's share of shuffled global batches
    (drop_remainder, `data.num_epochs` epochs, None = forever); validation/test: the arrays, for
    `eval_batches(arrays, batch_size)`. `id_map` (old id -> new id) remaps token ids for the
    trimmed-vocabulary model. num_labels (classify): every label must be in 0..num_labels−1 (checked
    in the files as they are read, and in the cached arrays). info: task, split, num_examples, steps_per_epoch, seq_len, batch_size,
    pad_id, vocab_size, cache_file, and num_labels (classify) or conversations_* counts (chat).
    """
    split = _split(split)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg.tokenizer)
    arrays, meta = load_arrays(data_cfg, split, tokenizer, num_labels)
    if num_labels and "labels" in arrays:
        check_labels(arrays["labels"], num_labels, lambda i: f"{split} split row {i} (cached in {meta['cache_file']})")
    if id_map is not None:
        arrays = apply_id_map(arrays, id_map)
    n, batch_size = num_rows(arrays), int(data_cfg["batch_size"])
    info = {"task": _task(data_cfg), "split": split, "num_examples": n, "seq_len": int(data_cfg["seq_len"]),
            "batch_size": batch_size, "pad_id": pad_id(tokenizer), "vocab_size": len(tokenizer),
            "steps_per_epoch": n // batch_size if split == "train" else math.ceil(n / batch_size), **meta}
    if split != "train":
        return arrays, info
    if n < batch_size:
        raise ValueError(f"the train split has {n} examples, fewer than one batch of {batch_size}")
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
