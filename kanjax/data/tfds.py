"""TensorFlow Datasets as a data source, without TensorFlow: `data.name = "tfds:<name>[:<version>]"`.

A prepared TFDS dataset in array_record format (under `data.tfds_dir`, default TFDS's own
~/tensorflow_datasets or $TFDS_DATA_DIR) is read with `tfds.data_source` (random access, no
TensorFlow) and handed to `kanjax.data` as one `datasets.Dataset` per split holding the task's
columns, so the validation carve, the tokenisation cache and the grain batches are those of every
other source. Nothing is downloaded at train time: a dataset that is not prepared fails at once.

Schemas → task columns (`data.tfds_text_field` names another field):
  classify  `text`, or `title` + " " + `description` (TFDS's ag_news_subset, as the CSV path joins
            the original AG News columns); `label` (int)
  text      `text` (str);  chat  `messages` (a sequence of {role, content})

`ag_news_local` is a TFDS builder over local AG News CSVs, for offline runs and tests:
    python -m kanjax.data.tfds prepare --csv_dir <AG News CSV folder> --data_dir DIR
Config `ag_news_local/text` (default) reads `text,label` CSVs; `ag_news_local/subset` reads the
original 3-column release into ag_news_subset's schema (title, description, label).
tensorflow_datasets is imported inside functions only: kanjax imports without it.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import os
import sys
from pathlib import Path

PREFIX = "tfds:"
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
LOCAL_BUILDER = "ag_news_local"
CHUNK = 1024  # records decoded per read
PREPARE = "python -m kanjax.data.tfds prepare"


def is_tfds(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def dataset_name(name: str) -> str:
    """`tfds:ag_news_subset:1.0.0` → `ag_news_subset:1.0.0` (TFDS's own `name[/config][:version]`)."""
    rest = name[len(PREFIX):] if is_tfds(name) else name
    if not rest or rest.startswith((":", "/")):
        raise ValueError(f"data.name={name!r}: expected tfds:<name>[:<version>], e.g. tfds:ag_news_subset")
    return rest


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _default_dir() -> str:
    from tensorflow_datasets.core import constants

    return constants.get_default_data_dir()


def _base(name: str) -> str:
    return name.split("/")[0].split(":")[0]


def _how_to_prepare(name: str, data_dir: str) -> str:
    cmd = f"{PREPARE} --name {name.split(':')[0]} --data_dir {data_dir}"
    if _base(name) == LOCAL_BUILDER:
        cmd += " --csv_dir <folder with train.csv, test.csv>"
    else:  # a catalogue dataset: TFDS downloads its sources once
        cmd += " (online, once)"
    return f"Prepare it in array_record format: {cmd}; or pass local files with --config.data.path=<local folder>."


def _prepared_there(name: str, data_dir: str) -> str:
    """Which configs/versions of `name` are prepared in `data_dir`, for error messages."""
    from etils import epath

    root = epath.Path(data_dir)
    found = [str(p.parent.relative_to(root)) for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
             for p in (root / _base(name)).glob(pattern)]
    return f" Prepared there: {', '.join(sorted(found))}." if found else ""


def open_builder(name: str, data_dir: str = ""):
    """The TFDS builder of a prepared dataset; raises FileNotFoundError naming the dataset, the
    directory searched and how to prepare it when it is unknown or not prepared (never downloads)."""
    tfds = _tfds()
    ds_name = dataset_name(name)
    searched = data_dir or _default_dir()
    try:
        builder = tfds.builder(ds_name, data_dir=data_dir or None)
    except (tfds.core.registered.DatasetNotFoundError, AssertionError) as e:
        # DatasetNotFoundError lists the whole catalogue: keep only its first line.
        raise FileNotFoundError(f"TFDS dataset {ds_name!r} not found in {searched}: neither in the TFDS "
                                f"catalogue nor prepared there ({str(e).splitlines()[0]})."
                                f"{_prepared_there(ds_name, searched)} {_how_to_prepare(ds_name, searched)}"
                                ) from None
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS dataset {ds_name!r} is not prepared in {searched} (looked for "
                                f"{builder.data_dir}; nothing is downloaded at train time)."
                                f"{_prepared_there(ds_name, searched)} {_how_to_prepare(ds_name, searched)}")
    return builder


def _columns(features, task: str, field: str, ds_name: str) -> dict:
    """{task column: record field(s)} for this schema; ValueError naming the fields found."""
    keys = list(features.keys())
    if task == "classify":
        if field:
            text = (field,)
        elif "text" in keys:
            text = ("text",)
        else:
            text = ("title", "description")
        columns = {"text": text, "label": ("label",)}
    else:
        column = "messages" if task == "chat" else "text"
        columns = {column: (field or column,)}
    missing = [f for fs in columns.values() for f in fs if f not in keys]
    if missing:
        raise ValueError(f"TFDS dataset {ds_name!r}: no field(s) {missing} for task {task!r}; fields found: "
                         f"{keys}. Name the text field with --config.data.tfds_text_field=<field>.")
    return columns


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _messages(value) -> list[dict]:
    """A TFDS Sequence({role, content}) decodes to a dict of arrays; the chat task wants a list of dicts."""
    if isinstance(value, dict):
        value = [dict(zip(value, row)) for row in zip(*value.values())]
    return [{"role": _str(m["role"]), "content": _str(m["content"])} for m in value]


def _to_dataset(source, columns: dict, label_names):
    """All records of one split (in stored order) as a datasets.Dataset with the task's columns."""
    import datasets

    out = {c: [] for c in columns}
    for start in range(0, len(source), CHUNK):
        for record in source.__getitems__(list(range(start, min(start + CHUNK, len(source))))):
            for column, fields in columns.items():
                if column == "label":
                    out[column].append(int(record[fields[0]]))
                elif column == "messages":
                    out[column].append(_messages(record[fields[0]]))
                else:  # one field, or title + " " + description joined as the CSV path joins them
                    out[column].append(" ".join(_str(record[f]) for f in fields))
    features = None
    if "label" in columns:
        label = datasets.ClassLabel(names=list(label_names)) if label_names else datasets.Value("int64")
        features = datasets.Features({"text": datasets.Value("string"), "label": label})
    return datasets.Dataset.from_dict(out, features=features)


def load_splits(name: str, data_dir: str, task: str, field: str = "") -> dict:
    """{TFDS split name: zero-argument loader of that split as a datasets.Dataset}; the builder is
    opened and the schema checked now, the records are read when a loader is called."""
    builder = open_builder(name, data_dir)
    ds_name = dataset_name(name)
    columns = _columns(builder.info.features, task, field, ds_name)
    label_names = getattr(builder.info.features["label"], "names", None) if task == "classify" else None
    try:
        sources = _tfds().data_source(ds_name, data_dir=data_dir or None, download=False)
    except NotImplementedError as e:  # prepared as tfrecord: no random access without TensorFlow
        raise ValueError(f"TFDS dataset {ds_name!r} in {builder.data_dir} is not in array_record format. "
                         f"{_how_to_prepare(ds_name, data_dir or _default_dir())}") from e
    return {str(split): functools.partial(_to_dataset, source, columns, label_names)
            for split, source in sources.items()}


def source_key(name: str, data_dir: str, field: str = "") -> dict:
    """What identifies a prepared TFDS dataset for the token cache: name, resolved version folder,
    the text field, dataset_info.json's hash and every file's size and mtime (re-preparing changes it)."""
    from etils import epath

    builder = open_builder(name, data_dir)
    folder = epath.Path(builder.data_dir)
    files = []
    for f in sorted(folder.iterdir()):
        st = f.stat()
        # Locally the nanosecond mtime, as for CSV files; a remote (gs://) stat has seconds.
        mtime = os.stat(f).st_mtime_ns if "://" not in str(folder) else st.mtime
        files.append((f.name, st.length, mtime))
    info = hashlib.sha256((folder / "dataset_info.json").read_bytes()).hexdigest()
    return {"tfds": dataset_name(name), "version": str(builder.version), "dir": str(folder),
            "field": field, "dataset_info": info, "files": files}


# --- ag_news_local: a TFDS builder over local AG News CSVs ----------------------------------------


@functools.cache  # defining the class registers it with TFDS, which allows one class per name
def ag_news_local_builder():
    """The `AgNewsLocal` GeneratorBasedBuilder class (registered as ag_news_local)."""
    tfds = _tfds()

    class AgNewsLocal(tfds.core.GeneratorBasedBuilder):
        """AG News from local CSVs (the manual dir): `text` config from `text,label` files,
        `subset` config (ag_news_subset's schema) from the original 3-column release."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [
            tfds.core.BuilderConfig(name="text", description="train.csv/test.csv with header text,label"),
            tfds.core.BuilderConfig(name="subset", description="original release: \"class\",\"title\","
                                                               "\"description\" rows, class 1..4, no header"),
        ]
        MANUAL_DOWNLOAD_INSTRUCTIONS = ("A folder with train.csv and/or test.csv: text,label rows for config text, the original "
                                        "3-column AG News release for subset.")

        def _info(self):
            text = ({"text": tfds.features.Text()} if self.builder_config.name == "text" else
                    {"title": tfds.features.Text(), "description": tfds.features.Text()})
            label = tfds.features.ClassLabel(names=AG_NEWS_CLASSES)
            features = tfds.features.FeaturesDict({**text, "label": label})
            # File order kept (keys are row numbers): the same rows, in the same order, as the CSV path.
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                         description="AG News topic classification from local CSV files.")

        def _split_generators(self, dl_manager):
            folder = Path(dl_manager.manual_dir)
            return {s: self._generate_examples(folder / f"{s}.csv") for s in ("train", "test")
                    if (folder / f"{s}.csv").exists()}

        def _generate_examples(self, file):
            with open(file, newline="", encoding="utf-8") as fh:
                if self.builder_config.name == "text":
                    for i, row in enumerate(csv.DictReader(fh)):
                        yield i, {"text": row["text"], "label": int(row["label"])}
                else:
                    for i, (cls, title, description) in enumerate(csv.reader(fh)):
                        yield i, {"title": title, "description": description, "label": int(cls) - 1}

    return AgNewsLocal


def prepare(name: str = LOCAL_BUILDER, data_dir: str = "", csv_dir: str = "") -> str:
    """Prepare `name` in array_record format under `data_dir`; returns the version folder.
    ag_news_local reads `csv_dir` and never touches the network; a catalogue dataset downloads."""
    tfds = _tfds()
    dl_config = {}
    if _base(name) == LOCAL_BUILDER:
        folder = Path(csv_dir).expanduser() if csv_dir else None
        if folder is None or not any((folder / f"{s}.csv").is_file() for s in ("train", "test")):
            raise FileNotFoundError(f"{LOCAL_BUILDER} needs --csv_dir=<folder with train.csv and/or "
                                    f"test.csv>; got {csv_dir!r}")
        ag_news_local_builder()
        dl_config = {"manual_dir": str(folder.resolve()), "try_download_gcs": False}
    builder = tfds.builder(dataset_name(name), data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**dl_config))
    return str(builder.data_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PREPARE.rsplit(" ", 1)[0], description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare a TFDS dataset in array_record format")
    p.add_argument("--name", default=LOCAL_BUILDER, help="TFDS name[/config][:version] (default ag_news_local)")
    p.add_argument("--csv_dir", default="", help="ag_news_local: folder with train.csv/test.csv")
    p.add_argument("--data_dir", default="", help="TFDS data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    folder = prepare(args.name, args.data_dir, args.csv_dir)
    print(f"prepared {folder}\ntrain with: --config.data.name=tfds:{args.name} "
          f"--config.data.tfds_dir={args.data_dir or _default_dir()}")
    return 0


if __name__ == "__main__":
    # Through the package module, so the builder class is defined (registered) once.
    from kanjax.data.tfds import main as _main

    sys.exit(_main())
