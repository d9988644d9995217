"""kanjax.data and kanjax.data_sources on the real shared data (../shared/data): AG News, FastChat chat, tinyshakespeare."""

import csv
import json

import numpy as np
import pytest

from kanjax import data
from kanjax.data import pipeline
from kanjax.data import sources as data_sources
from kanjax.data.arrays import apply_id_map, encode_chat, eval_batches, make_iterator, pack
from kanjax.data.sources import split_files


def cfg(**kw):
    """configs/base.py's data section (the schema: every key the pipeline reads) with overrides."""
    from configs.base import get_config

    c = get_config().data
    c.update({"seq_len": 64, "batch_size": 8, **kw})
    return c


@pytest.fixture(scope="module")
def agnews(shared_data):
    c = cfg(path=str(shared_data / "ag_news"))
    return c, {s: data.load_raw(c, s) for s in ("train", "validation", "test")}


# --- raw data -----------------------------------------------------------------------------------


def test_agnews_splits(agnews, shared_data):
    c, splits = agnews
    assert {s: len(d) for s, d in splits.items()} == {"train": 4500, "validation": 500, "test": 7600}
    for d in splits.values():
        assert set(d["label"]) == {0, 1, 2, 3}
    train, val = list(splits["train"]["text"]), list(splits["validation"]["text"])
    with open(shared_data / "ag_news" / "train.csv", newline="", encoding="utf-8") as f:
        file_rows = [r["text"] for r in csv.DictReader(f)]
    assert sorted(train + val) == sorted(file_rows)  # a partition of train.csv ...
    assert not set(train) & set(val)  # ... and disjoint (train.csv has no duplicate texts)
    assert list(data.load_raw(c, "validation")["text"]) == val  # deterministic
    other = list(data.load_raw(cfg(path=c.path, split_seed=1), "validation")["text"])
    assert len(other) == 500 and other != val


def test_original_agnews_csv_matches_hf_schema(agnews, shared_data):
    """`original/` holds the 3-column release (no header, class 1..4); all 7,600 rows must equal test.csv."""
    original = data.load_raw(cfg(path=str(shared_data / "ag_news" / "original")), "test")
    expected = agnews[1]["test"]
    assert original.column_names == ["text", "label"]
    assert list(original["label"]) == list(expected["label"])
    assert list(original["text"]) == list(expected["text"])


def test_error_messages(shared_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.load_raw(cfg(path=str(tmp_path / "nope.csv")), "train")
    with pytest.raises(FileNotFoundError, match="no 'test' split.*test"):
        data.load_raw(cfg(task="chat", path=str(shared_data / "chat")), "test")
    bad = tmp_path / "train.csv"
    bad.write_text("text,topic\nhello world,1\nbye,2\n")
    with pytest.raises(ValueError,
                       match=r"train\.csv: missing column\(s\) \['label'\].*found: \['text', 'topic'\]"):
        data.load_raw(cfg(path=str(tmp_path)), "train")
    with pytest.raises(FileNotFoundError, match=r"no_tokenizer does not exist; pass a local tokenizer folder "
                                                r"\(train\.py: --config\.data\.tokenizer=<folder>"):
        data.load_tokenizer(str(tmp_path / "no_tokenizer"))


def test_offline_hub_errors():
    if data_sources.hub_reachable():
        pytest.skip("the Hugging Face hub is reachable: the offline messages cannot be exercised")
    with pytest.raises(ConnectionError,
                       match=r"unreachable.*--config\.data\.path=<local folder>.*train\.csv"):
        data.load_raw(cfg(), "train")  # default hub id fancyzhx/ag_news
    with pytest.raises(OSError, match=r"unreachable.*--config\.data\.tokenizer=<folder>"):
        data.load_tokenizer("HuggingFaceTB/SmolLM2-135M")


# --- chat ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(shared_data, tokenizer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("chat_cache")
    c = cfg(task="chat", path=str(shared_data / "chat"), seq_len=1024, cache_dir=str(cache))
    unpacked, meta = data.load_arrays(cfg(**{**c.to_dict(), "packing": False}), "train", tokenizer)
    packed, packed_meta = data.load_arrays(cfg(**{**c.to_dict(), "packing": True}), "train", tokenizer)
    return c, unpacked, meta, packed, packed_meta


def test_chat_loss_mask_is_assistant_content_and_im_end(chat, tokenizer):
    c, unpacked, meta, _, _ = chat
    raw = data.load_raw(c, "train")
    assert meta["conversations_kept"] == len(raw) == 477 and meta["conversations_dropped"] == 0
    checked = 0
    for row, messages in enumerate(list(raw["messages"])):
        if (unpacked["segment_ids"][row] > 0).sum() == c.seq_len:
            continue  # the one truncated conversation: its mask is cut short
        on = unpacked["loss_mask"][row] > 0
        trained = tokenizer.decode(unpacked["targets"][row][on], skip_special_tokens=False)
        assert trained == "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
        checked += 1
    assert checked == 476


def _segments(arrays):
    """Per-sequence (ids, loss_mask) in row order, read back through segment_ids."""
    out = []
    for ids, lm, seg in zip(arrays["input_ids"], arrays["loss_mask"], arrays["segment_ids"]):
        for s in range(1, seg.max() + 1):
            out.append((ids[seg == s], lm[seg == s]))
    return out


def test_chat_packing(chat):
    c, unpacked, _, packed, _ = chat
    L = c.seq_len
    assert packed["input_ids"].shape[1] == L and len(packed["input_ids"]) < len(unpacked["input_ids"]) / 4
    for key in ("input_ids", "targets", "segment_ids", "positions"):
        assert packed[key].dtype == np.int32
    seg, pos, ids, tgt, lm = (packed[k] for k in ("segment_ids", "positions", "input_ids", "targets", "loss_mask"))
    for r in range(len(seg)):
        real = seg[r] > 0
        n_real = real.sum()
        assert real[:n_real].all() and not real[n_real:].any()  # padding only at the end
        s = seg[r][:n_real]
        assert s[0] == 1 and set(np.diff(s)) <= {0, 1}  # segments 1, 2, ... contiguous
        starts = np.flatnonzero(np.diff(s, prepend=0))
        expected_pos = np.arange(n_real) - np.repeat(starts, np.diff(np.append(starts, n_real)))
        np.testing.assert_array_equal(pos[r][:n_real], expected_pos)  # restart at 0 per segment
        assert (pos[r][n_real:] == 0).all()
    # No target crosses a segment boundary; trained targets are the next input token.
    on = lm > 0
    assert not on[:, -1].any()
    same = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] > 0)
    assert (same | ~on[:, :-1]).all()
    np.testing.assert_array_equal(tgt[:, :-1][on[:, :-1]], ids[:, 1:][on[:, :-1]])
    # Every token of every kept conversation appears exactly once, in order, with the same mask.
    a, b = _segments(packed), _segments(unpacked)
    assert len(a) == len(b) == 477
    for (ia, ma), (ib, mb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    assert packed["loss_mask"].sum() == unpacked["loss_mask"].sum()


def test_pack_truncation_and_boundaries():
    seqs = [np.arange(1, 6), np.arange(10, 13), np.arange(20, 24)]
    masks = [np.array([0, 0, 1, 1, 1], bool), np.array([0, 1, 1], bool), np.array([0, 1, 1, 1], bool)]
    out = pack(seqs, masks, seq_len=8, pad=0)
    np.testing.assert_array_equal(out["input_ids"], [[1, 2, 3, 4, 5, 10, 11, 12], [20, 21, 22, 23, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["targets"], [[2, 3, 4, 5, 0, 11, 12, 0], [21, 22, 23, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 1, 1, 1, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]])


def test_chat_truncation(shared_data, tokenizer):
    conv = list(data.load_raw(cfg(task="chat", path=str(shared_data / "chat")), "train")["messages"])[:50]
    seqs, masks, stats = encode_chat(tokenizer, conv, seq_len=48)
    assert stats["truncated"] > 0 and stats["kept"] + stats["dropped"] == 50
    assert all(len(s) <= 48 for s in seqs) and all(m[1:].any() for m in masks)


# --- text and id_map ----------------------------------------------------------------------------


def test_text_windows(shared_data, tokenizer, tmp_path):
    c = cfg(task="text", path=str(shared_data / "text" / "tinyshakespeare.txt"), seq_len=128, cache_dir=str(tmp_path))
    train, _ = data.load_arrays(c, "train", tokenizer)
    val, _ = data.load_arrays(c, "validation", tokenizer)
    ids, tgt, lm = train["input_ids"], train["targets"], train["loss_mask"]
    assert ids.shape[1] == 128 and len(val["input_ids"]) > 0.08 * len(ids)
    np.testing.assert_array_equal(tgt[:, :-1], ids[:, 1:])  # within a row
    np.testing.assert_array_equal(tgt[:-1, -1], ids[1:, 0])  # stride L: each token predicted once
    assert lm[:-1].all() and (train["segment_ids"][:-1] == 1).all()
    np.testing.assert_array_equal(train["positions"][0], np.arange(128))
    assert "First Citizen:\nBefore we proceed" in tokenizer.decode(np.concatenate([ids[0], val["input_ids"][0]]))


def test_id_map():
    arrays = {"input_ids": np.array([[5, 3, 2]], np.int32), "targets": np.array([[3, 2, 2]], np.int32),
              "loss_mask": np.ones((1, 3), np.float32)}
    id_map = np.array([-1, -1, 0, 1, -1, 2])
    out = apply_id_map(arrays, id_map)
    np.testing.assert_array_equal(out["input_ids"], [[2, 1, 0]])
    np.testing.assert_array_equal(out["targets"], [[1, 0, 0]])
    with pytest.raises(ValueError, match="not in the trimmed vocabulary"):
        apply_id_map({"input_ids": np.array([[4]])}, id_map)


# --- grain batching -----------------------------------------------------------------------------


def _toy(n=103):
    return {"idx": np.arange(n), "x": np.arange(n * 3).reshape(n, 3).astype(np.float32)}


def _take(it, k):
    return [next(it)["idx"] for _ in range(k)]


def test_iterator_determinism_and_epochs():
    kw = dict(batch_size=8, shuffle=True, num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1)
    a = _take(make_iterator(_toy(), seed=0, **kw), 30)
    b = _take(make_iterator(_toy(), seed=0, **kw), 30)
    c = _take(make_iterator(_toy(), seed=1, **kw), 30)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))
    first_epoch = np.concatenate(a)[:103]
    assert sorted(first_epoch) == list(range(103))  # each example once per epoch
    assert not (first_epoch == np.arange(103)).all()
    assert not (np.concatenate(a)[103:206] == first_epoch).all()  # reshuffled every epoch
    finite = list(make_iterator(_toy(), seed=0, **{**kw, "num_epochs": 2}))
    assert len(finite) == 206 // 8 and all(len(x["idx"]) == 8 for x in finite)


def test_iterator_shards_partition_global_batches():
    kw = dict(batch_size=8, seed=3, shuffle=True, num_epochs=None, drop_remainder=True)
    full = _take(make_iterator(_toy(), shard_index=0, shard_count=1, **kw), 20)
    s0 = _take(make_iterator(_toy(), shard_index=0, shard_count=2, **kw), 20)
    s1 = _take(make_iterator(_toy(), shard_index=1, shard_count=2, **kw), 20)
    for f, a, b in zip(full, s0, s1):
        assert len(a) == len(b) == 4
        np.testing.assert_array_equal(np.concatenate([a, b]), f)
    with pytest.raises(ValueError, match="divisible"):
        make_iterator(_toy(), shard_index=0, shard_count=3, **kw)


def test_iterator_save_restore():
    kw = dict(batch_size=8, seed=7, shuffle=True, num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1)
    straight = _take(make_iterator(_toy(), **kw), 30)  # crosses epoch boundaries (12 batches/epoch)
    it = make_iterator(_toy(), **kw)
    first = _take(it, 15)
    state = json.loads(json.dumps(it.get_state()))  # what grain's CheckpointHandler writes
    resumed = make_iterator(_toy(), **kw)
    resumed.set_state(state)
    for x, y in zip(straight, first + _take(resumed, 15)):
        np.testing.assert_array_equal(x, y)


def test_eval_batches_cover_each_example_once():
    arrays = {"idx": np.arange(10), "loss_mask": np.ones((10, 4), np.float32)}
    batches = list(eval_batches(arrays, 4, shard_index=0, shard_count=1))
    assert len(batches) == 3 and all(b["idx"].shape == (4,) for b in batches)
    w = np.concatenate([b["weight"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["idx"] for b in batches])[w > 0], np.arange(10))
    assert sum(b["loss_mask"].sum() for b in batches) == 40
    shards = [list(eval_batches(arrays, 4, shard_index=i, shard_count=2)) for i in range(2)]
    seen = np.concatenate([b["idx"][b["weight"] > 0] for s in shards for b in s])
    assert sorted(seen) == list(range(10)) and all(b["idx"].shape == (2,) for s in shards for b in s)


# --- build and the cache ------------------------------------------------------------------------


class CountingTokenizer:
    """The real tokenizer, counting the calls that tokenise text."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self._tok(*a, **kw)

    def apply_chat_template(self, *a, **kw):
        self.calls += 1
        return self._tok.apply_chat_template(*a, **kw)

    def __len__(self):
        return len(self._tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_build_classify_and_cache_reuse(shared_data, tokenizer, tmp_path):
    c = cfg(path=str(shared_data / "ag_news"), cache_dir=str(tmp_path), batch_size=16)
    counting = CountingTokenizer(tokenizer)
    arrays, info = data.build(c, "validation", seed=0, tokenizer=counting)
    assert counting.calls > 0
    assert info["num_examples"] == 500 and info["num_labels"] == 4 and info["steps_per_epoch"] == 32
    assert arrays["input_ids"].shape == (500, 64) and arrays["input_ids"].dtype == np.int32
    assert arrays["labels"].shape == (500,) and set(arrays["labels"]) == {0, 1, 2, 3}
    lengths = arrays["attention_mask"].sum(1)
    assert (arrays["input_ids"][arrays["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert (arrays["attention_mask"][np.arange(500), lengths - 1] == 1).all()  # right padding
    cache = tmp_path / info["cache_file"].split("/")[-1]
    mtime = cache.stat().st_mtime_ns

    counting.calls = 0
    again, info2 = data.build(c, "validation", seed=0, tokenizer=counting)
    assert counting.calls == 0 and info2["cache_file"] == info["cache_file"]
    assert cache.stat().st_mtime_ns == mtime
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], again[k])

    it, info = data.build(c, "train", seed=0, tokenizer=tokenizer)
    batch = next(it)
    assert info["steps_per_epoch"] == 4500 // 16
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": (16, 64), "attention_mask": (16, 64), "labels": (16,)}
    assert len(list(tmp_path.glob("*.npz"))) == 2  # changing seq_len would make a third


def test_local_folder_layout(tmp_path):
    """Split-named files of any supported format; an explicit dev split means no carving."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"t{i}" for i in range(6)], "label": [0, 1, 2, 3, 0, 1],
                             "extra": list(range(6))}), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "dev.csv").write_text("text,label\nNA,1\nnull,0\n")  # NA/null stay text
    (tmp_path / "notes.txt").write_text("not a split")
    c = cfg(path=str(tmp_path))
    assert sorted(split_files(tmp_path)) == ["train", "validation"]
    train, val = data.load_raw(c, "train"), data.load_raw(c, "validation")
    assert len(train) == 6 and train.column_names == ["text", "label"]
    assert list(val["text"]) == ["NA", "null"] and list(val["label"]) == [1, 0]


def test_build_chat_with_id_map(chat, tokenizer):
    c = chat[0]
    id_map = np.arange(len(tokenizer))[::-1].copy()  # any permutation stands in for the trimmed map
    it, info = data.build(c, "train", seed=0, tokenizer=tokenizer, id_map=id_map)
    assert info["conversations_kept"] == 477 and info["num_examples"] == len(chat[3]["input_ids"])
    batch = next(it)
    keys = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
    assert {k: v.shape for k, v in batch.items()} == {k: (8, 1024) for k in keys}
    assert set(np.unique(batch["input_ids"])) <= set(id_map[np.unique(chat[3]["input_ids"])])


# --- tokenizer ----------------------------------------------------------------------------------


def _same_tokenizer(a, b, texts):
    assert type(a) is type(b)
    assert a(texts)["input_ids"] == b(texts)["input_ids"]
    msgs = [{"role": "user", "content": "Hi <|im_end|> there"}, {"role": "assistant", "content": "Hello."}]
    assert a.apply_chat_template(msgs, tokenize=False) == b.apply_chat_template(msgs, tokenize=False)
    assert (a.pad_token_id, a.eos_token_id, len(a)) == (b.pad_token_id, b.eos_token_id, len(b))
    assert pipeline.tokenizer_fingerprint(a) == pipeline.tokenizer_fingerprint(b)


@pytest.mark.parametrize("named", ["as shipped", "Fast alias", "no class named"])
def test_load_tokenizer_is_autotokenizer_s_tokenizer(tokenizer_dir, tokenizer, agnews, tmp_path, named):
    """The class named in tokenizer_config.json is imported directly (no PyTorch import); it must be
    the tokenizer AutoTokenizer gives, ids, chat template and specials alike."""
    import shutil

    folder = tokenizer_dir
    if named != "as shipped":
        folder = tmp_path / "tok"
        shutil.copytree(tokenizer_dir, folder)
        cfg_file = folder / "tokenizer_config.json"
        tc = json.loads(cfg_file.read_text())
        if named == "Fast alias":
            tc["tokenizer_class"] = tc["tokenizer_class"] + "Fast"
        else:
            tc.pop("tokenizer_class")
        cfg_file.write_text(json.dumps(tc))
    from transformers import AutoTokenizer

    texts = list(agnews[1]["train"]["text"][:50]) + ["<|im_start|>user\nx<|im_end|>", "  spaces\tand\nlines "]
    reference = tokenizer if named == "as shipped" else AutoTokenizer.from_pretrained(str(folder))
    _same_tokenizer(data.load_tokenizer(str(folder)), reference, texts)


def test_load_tokenizer_does_not_import_torch(tokenizer_dir):
    import subprocess
    import sys

    code = ("import sys; from kanjax.data import load_tokenizer; load_tokenizer(sys.argv[1]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tokenizer_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_train_token_counts_are_the_texts_counts_and_are_cached(shared_data, tokenizer, tmp_path):
    from collections import Counter

    c = cfg(path=str(shared_data / "ag_news"), cache_dir=str(tmp_path))
    texts = data.train_texts(c, tokenizer)
    expected = Counter(i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids)
    assert pipeline.train_token_counts(c, tokenizer) == dict(expected)
    cached = pipeline.cache_file(c, "train", tokenizer, kind="counts")
    assert cached.is_file()
    c2 = cfg(path=str(shared_data / "ag_news"), cache_dir=str(tmp_path), seq_len=32)  # counts ignore seq_len
    assert pipeline.cache_file(c2, "train", tokenizer, kind="counts") == cached
    assert pipeline.train_token_counts(c2, tokenizer) == dict(expected)
