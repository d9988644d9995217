"""Raw data sources: local files (csv, json/jsonl, parquet, txt), hub datasets and prepared TFDS
datasets, each split read as a `datasets.Dataset` with exactly the task's columns, checked as read.

`load_raw(config.data, split)` is the entry; `kanjax.data` tokenises and caches what it returns.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import numpy as np

from kanjax.data import tfds as tfds_source
from kanjax.errors import InputError

__all__ = ["LAYOUT", "TASK_COLUMNS", "DataError", "check_labels", "check_split", "check_task", "env_offline",
           "hub_reachable", "load_raw", "split_files"]

TASK_COLUMNS = {"classify": ("text", "label"), "chat": ("messages",), "text": ("text",)}
BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
SPLIT_PREFIXES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                  "test": ("test",)}
LAYOUT = {"classify": "train.csv and test.csv with columns text,label (or the original AG News "
                      "3-column CSVs)",
          "chat": "*.jsonl files with a `messages` column (name them train*/test* to fix the splits)",
          "text": "*.txt files (paragraphs are examples)"}


def check_task(cfg) -> str:
    """`cfg.task`, one of TASK_COLUMNS' keys."""
    task = cfg.task
    if task not in TASK_COLUMNS:
        raise ValueError(f"data.task must be one of {sorted(TASK_COLUMNS)}, got {task!r}")
    return task


def canonical_split(split: str) -> str | None:
    """"train" | "validation" | "test" for any of their spellings (SPLIT_PREFIXES), else None."""
    return next((canonical for canonical, prefixes in SPLIT_PREFIXES.items() if split in prefixes), None)


def check_split(split: str) -> str:
    """The canonical name of `split`; an unknown one is an error."""
    canonical = canonical_split(split)
    if canonical is None:
        raise ValueError(f"unknown split {split!r}; use train, validation or test")
    return canonical


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
        if isinstance(v, (float, np.floating)):  # JSON 3.0, or a CSV column pandas read as decimals
            raise DataError(f"{where(i)}: label {v!r} is not an integer class index 0..{num_labels - 1}")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_labels:
            raise DataError(f"{where(i)}: label {v!r} is outside 0..{num_labels - 1} (model.num_labels={num_labels})")


def _non_integer_label(file: Path, num_labels: int) -> None:
    """The first label of a CSV written as something other than an integer, named by its line."""
    import csv

    with open(file, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), 2):
            value = (row.get("label") or "").strip()
            if not value.lstrip("-").isdigit():
                raise DataError(f"{file}:{line}: label {value!r} is not an integer class index 0..{num_labels - 1}")


def _check_columns(ds, task: str, source: str) -> None:
    missing = [c for c in TASK_COLUMNS[task] if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing} needed for task {task!r}; "
                        f"columns found: {ds.column_names} (rename them in the header)")
    if "text" in TASK_COLUMNS[task] and not any(isinstance(t, str) and t.strip() for t in ds["text"]):
        raise DataError(f"{source}: the text column is empty in all {len(ds)} rows")


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
    if task == "classify" and num_labels and builder == "csv" and ds.features["label"].dtype.startswith("float"):
        _non_integer_label(file, num_labels)  # one "3.0" makes pandas read every label as a decimal
    if task == "classify" and num_labels:
        first = 2 if builder == "csv" else 1  # the line of row 0: after the header in a CSV
        check_labels(ds["label"], num_labels, lambda i: f"{file}:{i + first}")
    return ds.select_columns(list(TASK_COLUMNS[task]))


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline run fails in milliseconds instead of after HF's retries."""
    from huggingface_hub import constants

    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def env_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str, task: str, revision: str | None = None):
    """A hub dataset as a DatasetDict (with HF_HUB_OFFLINE=1, from the local HF cache)."""
    import datasets

    message = (f"cannot load hub dataset {name!r}: the Hugging Face hub is unreachable (offline?). "
               f"Pass local files with --config.data.path=<local folder> holding {LAYOUT[task]}.")
    if not env_offline() and not hub_reachable():
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
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise DataError(f"data.val_fraction={val_fraction} of {n} training rows leaves an empty train or validation "
                        "split: give more rows or another data.val_fraction")
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

    task, split = check_task(data_cfg), check_split(split)
    if data_cfg.path:
        files = split_files(data_cfg.path)
        source = f"data path {data_cfg.path}"

        def load(s):
            parts = [_load_file(f, task, num_labels) for f in files[s]]
            return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    else:
        name = data_cfg.name
        if not name:
            raise DataError(f"task {task!r} needs data.path (local {LAYOUT[task]}) or data.name (hub id)")
        if tfds_source.is_tfds(name):
            loaders = tfds_source.load_splits(name, data_cfg.tfds_dir, task, data_cfg.tfds_text_field)
            files = {canonical_split(s): f for s, f in loaders.items() if canonical_split(s)}
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
