"""tensorflow-datasets as a data source (kanjax.data.tfds), end to end and offline: the shared AG News
CSVs prepared as a TFDS array_record dataset give the CSV path's rows, token arrays and training
losses bitwise; exact resume holds on it; TensorFlow is never imported; bad names fail early."""

import functools
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import kan_cheb2, linear
from kanjax import data
from tests.helpers.train import REPO_ROOT, apply_overrides, checkpoint_params, tiny_overrides


def cfg(**kw):
    """configs/base.py's data section (the schema: every key the pipeline reads) with overrides."""
    from configs.base import get_config

    c = get_config().data
    c.update({"seq_len": 32, "batch_size": 8, **kw})
    return c


def _prepare(name, csv_dir, data_dir):
    """The README's command, in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "kanjax.data.tfds", "prepare", f"--name={name}",
                          f"--csv_dir={csv_dir}", f"--data_dir={data_dir}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def tfds_dir(shared_data, tmp_path_factory):
    """ag_news_local (text,label CSVs) and ag_news_local/subset (the original 3-column test split)."""
    folder = tmp_path_factory.mktemp("tfds")
    out = _prepare("ag_news_local", shared_data / "ag_news", folder)
    assert f"--config.data.name=tfds:ag_news_local --config.data.tfds_dir={folder}" in out
    _prepare("ag_news_local/subset", shared_data / "ag_news" / "original", folder)
    return folder


def test_rows_equal_the_csv_path(tfds_dir, shared_data):
    import tensorflow_datasets as tfds

    sources = tfds.data_source("ag_news_local", data_dir=str(tfds_dir), download=False)
    assert {k: len(v) for k, v in sources.items()} == {"train": 5000, "test": 7600}
    csv_cfg, tfds_cfg = cfg(path=str(shared_data / "ag_news")), cfg(name="tfds:ag_news_local", tfds_dir=str(tfds_dir))
    for split in ("train", "validation", "test"):
        a, b = data.load_raw(csv_cfg, split), data.load_raw(tfds_cfg, split)
        assert b.column_names == ["text", "label"]
        assert list(a["text"]) == list(b["text"]), split  # same rows, same (file) order
        assert list(a["label"]) == list(b["label"]), split
    # ag_news_subset's schema: text = title + " " + description, as the CSV path joins the original columns.
    subset = data.load_raw(cfg(name="tfds:ag_news_local/subset", tfds_dir=str(tfds_dir)), "test")
    original = data.load_raw(cfg(path=str(shared_data / "ag_news" / "original")), "test")
    assert list(subset["text"]) == list(original["text"]) == list(a["text"])
    assert list(subset["label"]) == list(original["label"])
    # A text task reads a named field.
    text = data.load_raw(cfg(**{**tfds_cfg.to_dict(), "task": "text", "tfds_text_field": "text"}), "test")
    assert text.column_names == ["text"] and list(text["text"]) == list(a["text"])


def test_token_arrays_equal_the_csv_path_bitwise(tfds_dir, shared_data, tokenizer, tmp_path):
    csv_cfg = cfg(path=str(shared_data / "ag_news"), cache_dir=str(tmp_path))
    tfds_cfg = cfg(name="tfds:ag_news_local", tfds_dir=str(tfds_dir), cache_dir=str(tmp_path))
    for split in ("train", "validation", "test"):
        a, meta_a = data.load_arrays(csv_cfg, split, tokenizer)
        b, meta_b = data.load_arrays(tfds_cfg, split, tokenizer)
        assert meta_a["cache_file"] != meta_b["cache_file"]  # the source is part of the cache key
        assert meta_a["num_labels"] == meta_b["num_labels"] == 4
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split}/{key}")
    cached, meta = data.load_arrays(tfds_cfg, "test", tokenizer)  # from the cache file this time
    assert meta["cache_file"] == meta_b["cache_file"]
    np.testing.assert_array_equal(cached["input_ids"], b["input_ids"])


@functools.cache
def _chat_builder():
    """A TFDS builder of chat conversations (a Sequence of {role, content}) from one JSON-lines file."""
    import tensorflow_datasets as tfds

    class ChatLocalTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "a folder with train.jsonl"

        def _info(self):
            turn = {"role": tfds.features.Text(), "content": tfds.features.Text()}
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict(
                {"conversation": tfds.features.Sequence(turn)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(dl_manager.manual_dir / "train.jsonl")}

        def _generate_examples(self, file):
            for i, line in enumerate(file.read_text().splitlines()):
                yield i, {"conversation": json.loads(line)["messages"]}

    return ChatLocalTest


def test_chat_by_named_field_equals_the_jsonl_path(shared_data, tokenizer, tmp_path):
    import shutil

    import tensorflow_datasets as tfds

    src = tmp_path / "chat"
    src.mkdir()
    shutil.copy(shared_data / "chat" / "mt_bench_with_gpt4_reference_messages.jsonl", src / "train.jsonl")
    builder = _chat_builder()(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(src),
                                                                              try_download_gcs=False))
    common = dict(task="chat", seq_len=512, cache_dir=str(tmp_path / "cache"))
    jsonl_cfg = cfg(path=str(src / "train.jsonl"), **common)
    tfds_cfg = cfg(name="tfds:chat_local_test", tfds_dir=str(tmp_path / "tfds"), tfds_text_field="conversation",
                   **common)
    for split in ("train", "validation"):
        a, b = data.load_raw(jsonl_cfg, split), data.load_raw(tfds_cfg, split)
        assert [[dict(m) for m in c] for c in b["messages"]] == [[dict(m) for m in c] for c in a["messages"]]
        arrays_a, _ = data.load_arrays(jsonl_cfg, split, tokenizer)
        arrays_b, _ = data.load_arrays(tfds_cfg, split, tokenizer)
        for key in arrays_a:
            np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=f"{split}/{key}")
    with pytest.raises(ValueError, match=r"no field\(s\) \['messages'\].*\['conversation'\].*tfds_text_field"):
        data.load_raw(cfg(**{**tfds_cfg.to_dict(), "tfds_text_field": ""}), "train")


# One train.py run on tfds data, in its own process: it must never import TensorFlow.
TRAIN_SCRIPT = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("TENSORFLOW_IMPORTED", any(m == "tensorflow" or m.startswith("tensorflow.")
                                                              for m in sys.modules), flush=True))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]


def test_train_on_tfds_equals_csv_and_resumes_exactly(tfds_dir, shared_data, tmp_path, capsys):
    """train.py on tfds data stops after 2 steps and a second run resumes to 4; the losses of all 4
    steps and the final parameters equal those of one uninterrupted run on the same rows from CSV."""
    from kanjax.training.loop import run

    common = {"train.steps": 4, "train.log_every": 1, "checkpoint.every": 2, "eval.limit": 16,
              "eval.test_limit": 16, "checkpoint.async_save": False}
    flags = {**tiny_overrides(tmp_path / "tfds", shared_data, **common),
             "data.path": "", "data.name": "tfds:ag_news_local", "data.tfds_dir": str(tfds_dir)}
    args = [str(REPO_ROOT / "train.py"), f"--config={REPO_ROOT / 'configs/linear.py'}", "--stop_after=2"]
    args += [f"--config.{k}={v}" for k, v in flags.items()]
    out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TENSORFLOW_IMPORTED False" in out.stdout, out.stdout[-2000:]
    assert len(_losses(tmp_path / "tfds" / "run")) == 2

    run(apply_overrides(linear.get_config(), flags))
    assert "resumed from checkpoint step 2" in capsys.readouterr().out
    run(apply_overrides(linear.get_config(), tiny_overrides(tmp_path / "csv", shared_data, **common)))

    tfds_losses, csv_losses = _losses(tmp_path / "tfds" / "run"), _losses(tmp_path / "csv" / "run")
    assert [step for step, _ in csv_losses] == [1, 2, 3, 4]
    assert tfds_losses == csv_losses  # floats from JSON: bitwise equal
    a, b = checkpoint_params(tmp_path / "tfds" / "run", 4), checkpoint_params(tmp_path / "csv" / "run", 4)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_unknown_or_unprepared_dataset_fails_early(tfds_dir, shared_data, tmp_path):
    from kanjax.training.loop import run

    empty = tmp_path / "empty"
    empty.mkdir()
    fix = r"--config\.data\.path=<local folder>"
    with pytest.raises(FileNotFoundError, match=rf"'no_such_dataset' not found in {empty}.*prepare.*{fix}"):
        data.load_raw(cfg(name="tfds:no_such_dataset", tfds_dir=str(empty)), "train")
    # A catalogue dataset that is not prepared: nothing is downloaded.
    with pytest.raises(FileNotFoundError,
                       match=rf"'ag_news_subset' is not prepared in {empty}.*--name ag_news_subset.*{fix}"):
        data.load_raw(cfg(name="tfds:ag_news_subset", tfds_dir=str(empty)), "test")
    # The local builder: the message names its --csv_dir; a wrong version lists the prepared ones.
    with pytest.raises(FileNotFoundError, match=rf"'ag_news_local' .*{empty}.*--csv_dir.*{fix}"):
        data.load_raw(cfg(name="tfds:ag_news_local", tfds_dir=str(empty)), "train")
    with pytest.raises(FileNotFoundError, match=r"'ag_news_local:9\.0\.0'.*Prepared there: .*ag_news_local/text/1\.0\.0"):
        data.load_raw(cfg(name="tfds:ag_news_local:9.0.0", tfds_dir=str(tfds_dir)), "train")
    with pytest.raises(ValueError, match=r"expected tfds:<name>"):
        data.load_raw(cfg(name="tfds:"), "train")
    # Through train_loop.run: before any step or checkpoint.
    config = apply_overrides(kan_cheb2.get_config(), {**tiny_overrides(tmp_path, shared_data),
                                                      "data.path": "", "data.name": "tfds:ag_news_local",
                                                      "data.tfds_dir": str(empty)})
    with pytest.raises(FileNotFoundError, match="ag_news_local"):
        run(config)
    assert not (tmp_path / "run" / "checkpoints").exists()
