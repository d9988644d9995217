"""benchmarks/agnews_study.py: a run already trained (in any phase) is reused, and the budget's sequence
length holds the texts whole."""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import agnews_plan as plan_lib  # noqa: E402
import agnews_study as study  # noqa: E402
from agnews_records import study_args  # noqa: E402


def test_an_older_record_of_the_same_training_is_reused_and_a_different_one_is_not(tmp_path):
    """A record written before the config schema grew (keys missing) still counts as the same run;
    checkpointing settings never matter; any training setting that differs does."""
    import json

    args = study_args(tmp_path)
    arm = next(a for a in plan_lib.TUNE if a.name == "kan_chebyshev2_lr0.001")
    flags = plan_lib.run_overrides("tune", arm, 0, args, {})
    old = study.resolved_config(arm, {**flags, "checkpoint.every": 0})
    del old["train"]["eps"], old["data"]["split_seed"]  # keys an older commit did not have
    rec = {"name": "kan_linear_bottleneck", "seed": 0, "config": "configs/kan_cheb2.py", "resolved_config": old}
    folder = tmp_path / "rec" / "recipe"
    folder.mkdir(parents=True)
    (folder / "kan_linear_bottleneck__seed0.json").write_text(json.dumps(rec))
    assert study.same_run(args, "tune", arm, 0, flags) == folder / "kan_linear_bottleneck__seed0.json"
    other = next(a for a in plan_lib.TUNE if a.name == "kan_chebyshev2_lr0.003")
    assert study.same_run(args, "tune", other, 0, plan_lib.run_overrides("tune", other, 0, args, {})) is None
    assert study.same_run(args, "tune", arm, 1, plan_lib.run_overrides("tune", arm, 1, args, {})) is None
    # A linear model reads no KAN setting: a grid record made before centring became the default is the
    # study's linear run; a KAN arm whose centring differs is not.
    lin = next(a for a in plan_lib.TUNE if a.name == "linear_lr0.001")
    lin_flags = plan_lib.run_overrides("tune", lin, 0, args, {})
    old_lin = study.resolved_config(lin, {**lin_flags, "kan.center": "none"})
    (folder / "linear_lr0.001__seed0.json").write_text(json.dumps(
        {"name": "linear_lr0.001", "seed": 0, "config": "configs/linear.py", "resolved_config": old_lin}))
    study_lin = next(a for a in plan_lib.STUDY if a.name == "linear")
    flags = plan_lib.run_overrides("study", study_lin, 0, args, {"linear": 1e-3})
    assert study.same_run(args, "study", study_lin, 0, flags) == folder / "linear_lr0.001__seed0.json"
    assert study.same_run(args, "tune", arm, 0, {**plan_lib.run_overrides("tune", arm, 0, args, {}),
                                                 "kan.center": "none"}) is None


def test_the_budget_holds_at_least_90_percent_of_the_texts_whole(shared_data):
    """The issue's bar for the sequence length, on the shared data, against a count made without kanjax
    (the csv module and the `tokenizers` library on the tokenizer's own file)."""
    import csv

    from tokenizers import Tokenizer

    cover = study.text_coverage(str(shared_data), plan_lib.SEQ_LEN)
    assert min(cover[s]["whole"] for s in ("train", "validation", "test")) >= 0.9
    tok = Tokenizer.from_file(str(shared_data / "smollm2_tokenizer" / "tokenizer.json"))
    for files, splits in ((["train.csv"], ("train", "validation")), (["test.csv"], ("test",))):
        with open(shared_data / "ag_news" / files[0], newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        lengths = np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)])
        assert sum(cover[s]["texts"] for s in splits) == len(texts)
        whole = sum(round(cover[s]["whole"] * cover[s]["texts"]) for s in splits)
        assert whole == int(np.sum(lengths <= plan_lib.SEQ_LEN)), files
    assert cover["test"]["median"] == float(np.median(lengths))
